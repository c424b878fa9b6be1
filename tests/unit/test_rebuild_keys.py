"""What `dicomflow rebuild-index` makes of each storage key, and the order keys are listed in
(the checkpoint is a key: a resumed walk must skip exactly what sorts before it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.imaging.keys import preview_key
from libs.storage import conflict_key, instance_key
from libs.storage.local import LocalStore, file_url
from libs.storage.memory import MemoryStore
from libs.tools.rebuild import Target, classify

KEYS = [
    instance_key("1.2", "1.2.3", "1.2.3.4"),
    instance_key("1.2.9", "1.2.9.1", "1.2.9.1.1"),  # "1.2.9/" sorts before "1.2/"
    instance_key("1.2", "1.2.30", "1.2.30.1"),
    preview_key("1.2", "1.2.3", "1.2.3.4", "preview"),
    preview_key("1.2", "1.2.3", "1.2.3.4", "thumbnail", frame=2),
    conflict_key("1.2.3.4", "a" * 64),
    "studies/1.2/1.2.3/.1.2.3.5.dcm.0f.tmp",
    "README.txt",
    "archives/x.tar.zst",
]


def test_each_key_is_an_instance_a_conflict_or_a_reason_to_skip() -> None:
    assert classify(KEYS[0]) == Target(KEYS[0], "1.2.3.4", "1.2", "1.2.3")
    assert classify(KEYS[5]) == Target(KEYS[5], "1.2.3.4")
    assert classify(KEYS[5]).conflict  # type: ignore[union-attr]
    assert classify(KEYS[3]) == classify(KEYS[4]) == "preview"
    assert classify(KEYS[6]) == "temporary file"
    assert classify(KEYS[7]) == classify(KEYS[8]) == "not a DICOM object"
    assert classify("studies/1.2/../1.2.3.dcm") == "outside the storage layout"
    assert classify("studies/1.2/x/1.2.3.dcm") == "outside the storage layout"
    too_long = "1." + "2." * 40 + "3"  # over 64 characters: not a UID
    assert classify(f"studies/1.2/1.2.3/{too_long}.dcm") == "outside the storage layout"


@pytest.fixture(params=["file", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> LocalStore | MemoryStore:
    if request.param == "memory":
        mem = MemoryStore()
        mem.objects.update(dict.fromkeys(KEYS, b"x"))
        return mem
    for key in KEYS:
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(b"x")
    return LocalStore(file_url(tmp_path))


async def test_keys_are_listed_in_string_order_and_resume_after_any_key(
    store: LocalStore | MemoryStore,
) -> None:
    assert [k async for k in store.keys("")] == sorted(KEYS)
    for after in [*sorted(KEYS), "studies/1.2/", "studies/1.2.9", "a", "zzz"]:
        got = [k async for k in store.keys(start_after=after)]
        assert got == [k for k in sorted(KEYS) if k > after], after
    assert [k async for k in store.keys("studies/1.2/")] == sorted(
        k for k in KEYS if k.startswith("studies/1.2/")
    )
