"""A file the DICOM receiver wrote and closed carries a stamp without 2 s of rest (ADR 0031),
so the storage-writer copies it without hashing it again; anything else keeps the rule."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from libs.contracts.errors import PermanentError
from libs.dicom.extract import extract_many
from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from libs.storage import instance_key
from libs.storage.base import PutRequest, StoredObject
from libs.storage.local import LocalStore
from libs.storage.stamp import (
    MIN_AGE_NS,
    OWN_MIN_AGE_NS,
    is_own,
    own_roots,
    source_stamp,
)
from services.dicom_receiver.handlers import StagingFile, make_durable


def fake_stat(ctime_ns: int, mtime_ns: int | None = None) -> os.stat_result:
    mtime = ctime_ns if mtime_ns is None else mtime_ns
    st = SimpleNamespace(st_ino=7, st_size=100, st_mtime_ns=mtime, st_ctime_ns=ctime_ns)
    return cast(os.stat_result, st)


def test_an_own_file_needs_only_a_tick_of_rest_the_others_two_seconds() -> None:
    changed = 1_700_000_000_123_456_789  # nanosecond timestamps: sub-millisecond digits
    st = fake_stat(changed)
    assert source_stamp(st, st, now_ns=changed + OWN_MIN_AGE_NS, own=True) is not None
    assert source_stamp(st, st, now_ns=changed + OWN_MIN_AGE_NS - 1, own=True) is None
    assert source_stamp(st, st, now_ns=changed + OWN_MIN_AGE_NS, own=False) is None
    assert source_stamp(st, st, now_ns=changed + MIN_AGE_NS, own=False) is not None
    moved = fake_stat(changed + 1)  # written again meanwhile
    assert source_stamp(st, moved, now_ns=changed + MIN_AGE_NS, own=True) is None


def test_an_own_file_on_coarse_timestamps_keeps_the_two_seconds() -> None:
    """ext4 with 128-byte inodes keeps whole seconds, FAT 10 ms or 2 s: a later write may
    keep the same times for that long, so the short rest does not vouch for the bytes."""
    for whole in (1_700_000_000_000_000_000, 1_700_000_000_120_000_000):
        st = fake_stat(whole)
        assert source_stamp(st, st, now_ns=whole + 10 * OWN_MIN_AGE_NS, own=True) is None
        assert source_stamp(st, st, now_ns=whole + MIN_AGE_NS, own=True) is not None


def test_own_means_inside_the_folder_after_resolving_dots(tmp_path: Path) -> None:
    roots = own_roots([tmp_path / "receiver"])
    assert is_own(str(tmp_path / "receiver" / "2026120710" / "a.dcm"), roots)
    assert not is_own(str(tmp_path / "receiver" / ".." / "nas" / "a.dcm"), roots)
    assert not is_own(str(tmp_path / "receiver2" / "a.dcm"), roots), "a sibling's prefix"
    assert not is_own(str(tmp_path / "receiver"), roots)
    assert not is_own("receiver/a.dcm", own_roots(["receiver"])), "relative: not ours"
    assert not is_own(str(tmp_path / "receiver" / "a.dcm"), ())


def received(root: Path) -> Path:
    """An instance as the receiver stages it: streamed, made durable, closed."""
    sent = root.parent / "sent.dcm"
    ds = make_dataset(
        patient_id="P1",
        patient_name="Test^Own",
        study_uid=synthetic_uid("own:study"),
        series_uid=synthetic_uid("own:series"),
        sop_uid=synthetic_uid(f"own:{root}"),
    )
    write_instance(sent, ds)
    data = sent.read_bytes()
    staging = StagingFile(root, meta=b"")  # the preamble and DICM, then what follows them
    staging.queue(memoryview(data[132:]))
    staging.flush()
    assert make_durable([staging]) == [None]
    return staging.path


async def test_a_received_file_is_stamped_at_once_and_copied_without_hashing(
    tmp_path: Path,
) -> None:
    root = tmp_path / "receiver"
    path = received(root)
    nas = tmp_path / "nas" / "a.dcm"
    nas.parent.mkdir()
    nas.write_bytes(path.read_bytes())  # the same bytes, just written, not ours
    time.sleep(OWN_MIN_AGE_NS / 1e9 * 1.5)  # a kernel tick or two, far below 2 s
    own, foreign = extract_many([str(path), str(nas)], own_roots=own_roots([root]))
    assert not isinstance(own, Exception) and not isinstance(foreign, Exception)
    assert foreign[1].source_stamp is None, "just written by someone else: 2 s of rest"
    stamp = own[1].source_stamp
    st = path.stat()
    assert stamp == f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"

    store = LocalStore((tmp_path / "store").as_uri())
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.5")
    # The stamp vouches for the bytes: a wrong expected hash is not even looked at.
    (result,) = await store.put_files([PutRequest(key, path, "0" * 64, stamp)])
    assert isinstance(result, StoredObject) and result.created
    assert store.path_for(key).read_bytes() == path.read_bytes()


async def test_a_received_file_written_after_extraction_is_hashed_and_refused(
    tmp_path: Path,
) -> None:
    root = tmp_path / "receiver"
    path = received(root)
    time.sleep(OWN_MIN_AGE_NS / 1e9 * 1.5)
    ((_, hashes),) = extract_many([str(path)], own_roots=own_roots([root]))  # type: ignore[misc]
    assert hashes.source_stamp is not None
    with path.open("r+b") as f:  # someone writes into it in place, same size
        f.seek(200)
        f.write(b"\xff")
    store = LocalStore((tmp_path / "store").as_uri())
    store.link_own([root])  # as the storage-writer runs: not linked either (ADR 0034)
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.6")
    (result,) = await store.put_files(
        [PutRequest(key, path, hashes.file_sha256, hashes.source_stamp)]
    )
    assert isinstance(result, PermanentError) and "source changed" in str(result)
    assert not store.path_for(key).exists() and path.stat().st_nlink == 1


# Each source's own setting for its staging folder, and a folder for it.
STAGING_ENV = {
    "RECEIVER_STAGING_DIR": "/staging/receiver",
    "ORTHANC_STAGING_DIR": "/staging/orthanc",
    "ISO_STAGING_DIR": "/staging/iso",
    "WATCHER_STAGING_DIR": "/staging/pacs-get",
    "API_STOW_STAGING_DIR": "/staging/stow",
}


@pytest.mark.parametrize("name", sorted(STAGING_ENV))
def test_the_extractor_and_the_storage_writer_read_each_sources_folder(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each source's own setting, read by both: the extractor stamps its files at once
    (this ADR), the storage-writer links them (ADR 0034); a folder not set is not ours."""
    from services.extractor.config import ExtractorSettings
    from services.storage_writer.config import StorageWriterSettings

    for other in STAGING_ENV:
        monkeypatch.delenv(other, raising=False)
    assert ExtractorSettings().own_staging() == StorageWriterSettings().own_staging() == []
    monkeypatch.setenv(name, STAGING_ENV[name])
    expected = [Path(STAGING_ENV[name])]
    assert ExtractorSettings().own_staging() == expected
    assert StorageWriterSettings().own_staging() == expected
