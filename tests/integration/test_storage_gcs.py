"""The gs:// backend through the real google-cloud-storage client against a real GCS
JSON-API emulator process."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.cloud import storage

from libs.contracts.errors import PermanentError
from libs.storage import instance_key, open_store
from libs.storage.gcs import MULTIPART_MAX, GcsStore
from load_test.gcs import GcsEmulator
from tests.polling import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def emulator(gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[GcsEmulator]:
    for name, value in gcs_emulator.env.items():
        monkeypatch.setenv(name, value)
    yield gcs_emulator


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def names(emulator: GcsEmulator) -> list[str]:
    return sorted(b.name for b in storage.Client().list_blobs(emulator.bucket))


async def test_small_and_large_objects_are_verified_idempotent_and_readable(
    emulator: GcsEmulator, tmp_path: Path
) -> None:
    store = open_store(emulator.url("site-a"))
    assert isinstance(store, GcsStore)
    small, large = tmp_path / "small.dcm", tmp_path / "large.dcm"
    small_sha = write(small, b"DICM" * 1000)
    large_sha = write(large, os.urandom(MULTIPART_MAX + 3 * 1024 * 1024 + 17))  # resumable
    keys = {
        small: instance_key("1.2", "1.2.3", "1.2.3.4"),
        large: instance_key("1.2", "1.2.3", "1.2.3.5"),
    }
    for src, sha in ((small, small_sha), (large, large_sha)):
        first = await store.put_file(keys[src], src, expected_sha256=sha)
        again = await store.put_file(keys[src], src, expected_sha256=sha)
        assert first.created and not again.created
        assert first.url == f"gs://{emulator.bucket}/site-a/{keys[src]}"
        assert await store.size(keys[src]) == src.stat().st_size
        assert b"".join([c async for c in store.read(keys[src], 1 << 20)]) == src.read_bytes()
    # No temporary object is left behind by the resumable path.
    assert names(emulator) == sorted(f"site-a/{k}" for k in keys.values())
    blob = storage.Client().bucket(emulator.bucket).get_blob(f"site-a/{keys[large]}")
    assert blob.metadata == {"sha256": large_sha}
    assert await store.size("studies/9/9/9.dcm") is None
    with pytest.raises(FileNotFoundError):
        [c async for c in store.read("studies/9/9/9.dcm")]


async def test_never_overwrites_different_content(emulator: GcsEmulator, tmp_path: Path) -> None:
    store = open_store(emulator.url())
    a, b = tmp_path / "a", tmp_path / "b"
    key = "studies/1/2/3.dcm"
    await store.put_file(key, a, expected_sha256=write(a, b"one"))
    with pytest.raises(PermanentError, match="refusing to overwrite"):
        await store.put_file(key, b, expected_sha256=write(b, b"two"))
    assert b"".join([c async for c in store.read(key)]) == b"one"


async def test_rejects_a_source_that_changed_and_stores_nothing(
    emulator: GcsEmulator, tmp_path: Path
) -> None:
    store = open_store(emulator.url())
    src = tmp_path / "a"
    src.write_bytes(b"now")
    with pytest.raises(PermanentError, match="changed since it was extracted"):
        await store.put_file("studies/1/2/3.dcm", src, expected_sha256="0" * 64)
    assert names(emulator) == []


async def test_a_transient_outage_is_retried_with_backoff(
    emulator: GcsEmulator, tmp_path: Path
) -> None:
    store = open_store(emulator.url())
    src = tmp_path / "a"
    sha = write(src, b"survives an outage")
    emulator.stop()  # connection refused until it is back on the same port
    restart = threading.Timer(1.5, emulator.start)
    restart.start()
    try:
        stored = await store.put_file("studies/1/2/3.dcm", src, expected_sha256=sha)
    finally:
        restart.join()
    assert stored.created
    assert b"".join([c async for c in store.read("studies/1/2/3.dcm")]) == src.read_bytes()


def test_urls_are_validated() -> None:
    with pytest.raises(ValueError, match="not a gs://"):
        GcsStore("gs:///no-bucket", client=object())
    with pytest.raises(ValueError, match="unsafe storage key"):
        GcsStore("gs://bucket/../up", client=object())


CHILD = """
import asyncio, sys
from pathlib import Path
from libs.storage.gcs import GcsStore
url, key, src, sha = sys.argv[1:]
store = GcsStore(url, resumable_chunk=256 * 1024)  # many requests: the kill lands mid-upload
asyncio.run(store.put_file(key, Path(src), expected_sha256=sha))
"""


async def test_an_upload_killed_midway_leaves_nothing_under_the_final_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = GcsEmulator(log=tmp_path / "emulator.log", quiet=False)
    emulator.start()
    try:
        for name, value in emulator.env.items():
            monkeypatch.setenv(name, value)
        src = tmp_path / "big.dcm"
        sha = write(src, os.urandom(64 << 20))
        key = "studies/1/2/3.dcm"
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, emulator.url(), key, str(src), sha],
            env={**os.environ, **emulator.env},
        )

        def uploading() -> bool:
            if emulator.log.read_text(errors="replace").count("upload_id=") >= 5:
                return True
            assert child.poll() is None, "the upload ended before it could be interrupted"
            return False

        await eventually(
            uploading, 60, what=lambda: emulator.log.read_text()[-2000:], interval=0.01
        )
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert f"dicomflow/{key}" not in names(emulator)  # at most a temporary object
        assert all("/.incoming/" in n for n in names(emulator))
        store = open_store(emulator.url())
        stored = await store.put_file(key, src, expected_sha256=sha)  # the retry succeeds
        assert stored.created
        assert await store.size(key) == src.stat().st_size
    finally:
        emulator.stop()
