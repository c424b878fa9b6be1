"""LocalStore on a real block device (a loop-mounted ext4 image): copies go past the page
cache (O_DIRECT) and a full disk fails the copies that do not fit, leaving no partial file,
and the same batch stores every byte once space is freed."""

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.storage import instance_key
from libs.storage.base import PutRequest, StoredObject
from libs.storage.direct import ALIGN
from libs.storage.local import LocalStore
from tests.private_servers import small_ext4


@pytest.fixture
def disk() -> Iterator[Path]:
    with small_ext4(16) as folder:
        yield folder


def direct_store(root: Path) -> LocalStore:
    store = LocalStore(root.as_uri())
    store.enable_direct_io()
    return store


def requests(folder: Path, count: int, size: int, stamped: bool) -> list[PutRequest]:
    out = []
    for n in range(count):
        path = folder / f"{n}.dcm"
        data = os.urandom(size)
        path.write_bytes(data)
        st = path.stat()
        stamp = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
        key = instance_key("1.2", "1.2.3", f"1.2.3.{n}")
        out.append(
            PutRequest(key, path, hashlib.sha256(data).hexdigest(), stamp if stamped else None)
        )
    return out


def cached(path: Path, length: int) -> bool:
    """Whether the first `length` bytes of `path` are in the page cache (a read that may not
    wait for the device succeeds only then)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(length)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


@pytest.mark.parametrize("stamped", [True, False], ids=["stamped", "hashed"])
async def test_copies_bypass_the_page_cache(disk: Path, tmp_path: Path, stamped: bool) -> None:
    store = direct_store(disk / "storage")
    batch = requests(tmp_path, 3, 300_000 + 77, stamped)
    results = await store.put_files(batch)
    for request, result in zip(batch, results, strict=True):
        assert isinstance(result, StoredObject) and result.created, result
        stored = store.path_for(request.key)
        body = request.source.stat().st_size // ALIGN * ALIGN
        assert not cached(stored, body), "the copy's bytes were left in the page cache"
        assert stored.read_bytes() == request.source.read_bytes()


async def test_a_full_disk_fails_what_does_not_fit_and_leaves_no_partial_file(
    disk: Path, tmp_path: Path
) -> None:
    store = direct_store(disk / "storage")
    batch = requests(tmp_path, 8, 1_500_000 + 5, stamped=True)  # 12 MB
    filler = disk / "filler"
    with filler.open("wb") as f:  # leave about 4 MB
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        f.write(b"\0" * (free - (4 << 20)))
    results = await store.put_files(batch)
    full = [r for r in results if isinstance(r, OSError) and r.errno == errno.ENOSPC]
    stored = [r for r in results if isinstance(r, StoredObject)]
    assert full and stored and len(full) + len(stored) == len(batch), results
    assert not list((disk / "storage" / ".partial").iterdir()), "partial files left"
    filler.unlink()
    results = await store.put_files(batch)
    assert all(isinstance(r, StoredObject) for r in results), results
    for request in batch:
        assert store.path_for(request.key).read_bytes() == request.source.read_bytes()
    assert not list((disk / "storage" / ".partial").iterdir())


async def test_without_direct_io_copies_stay_in_the_page_cache(disk: Path, tmp_path: Path) -> None:
    """The default (STORAGE_WRITER_DIRECT_IO off): copy_file_range through the page cache."""
    store = LocalStore((disk / "storage").as_uri())
    [request] = requests(tmp_path, 1, 300_000 + 77, stamped=True)
    [result] = await store.put_files([request])
    assert isinstance(result, StoredObject) and result.created, result
    assert cached(store.path_for(request.key), 300_000 // ALIGN * ALIGN)
