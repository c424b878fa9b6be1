"""Copies written past the page cache (`libs.storage.direct`): every size comes out byte for
byte, on the stamped and the hashed path, and a filesystem that refuses O_DIRECT (at open or
at a write) gets the same copy through the page cache."""

import errno
import hashlib
import os
from pathlib import Path

import pytest

from libs.storage import direct, instance_key
from libs.storage.base import PutRequest, StoredObject
from libs.storage.direct import ALIGN, CHUNK
from libs.storage.local import COPIES_IN_FLIGHT, LocalStore

SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 123]


def direct_store(root: Path) -> LocalStore:
    store = LocalStore(root.as_uri())
    store.enable_direct_io()
    return store


def sources(folder: Path) -> list[tuple[Path, str, str]]:
    """A file per size (bytes that differ at every offset), its SHA-256 and its stamp."""
    out = []
    for size in SIZES:
        path = folder / f"{size}.dcm"
        data = (hashlib.sha256(str(size).encode()).digest() * (size // 32 + 1))[:size]
        path.write_bytes(data)
        st = path.stat()
        stamp = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
        out.append((path, hashlib.sha256(data).hexdigest(), stamp))
    return out


def batch(files: list[tuple[Path, str, str]], stamped: bool) -> list[PutRequest]:
    return [
        PutRequest(instance_key("1.2", "1.2.3", f"1.2.3.{n}"), p, d, s if stamped else None)
        for n, (p, d, s) in enumerate(files)
    ]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "page-cache"])
@pytest.mark.parametrize("stamped", [True, False], ids=["stamped", "hashed"])
async def test_every_size_is_copied_byte_for_byte(
    tmp_path: Path, stamped: bool, direct: bool
) -> None:
    store = (
        direct_store(tmp_path / "store") if direct else LocalStore((tmp_path / "store").as_uri())
    )
    files = sources(tmp_path)
    results = await store.put_files(batch(files, stamped))
    for (path, _, _), result in zip(files, results, strict=True):
        assert isinstance(result, StoredObject) and result.created, result
        stored = store.path_for(result.url.rsplit("/store/", 1)[1])
        assert stored.read_bytes() == path.read_bytes(), path.name
        assert result.size == path.stat().st_size
    assert not list((tmp_path / "store").rglob("*.tmp"))


async def test_a_changed_source_is_still_refused_on_the_direct_path(tmp_path: Path) -> None:
    store = direct_store(tmp_path / "store")
    (path, digest, _), *_ = sources(tmp_path)[-1:]
    path.write_bytes(path.read_bytes()[:-1] + b"!")  # after it was hashed
    [result] = await store.put_files(
        [PutRequest(instance_key("1.2", "1.2.3", "1.2.3.4"), path, digest)]
    )
    assert isinstance(result, Exception) and "source changed" in str(result)
    assert not list((tmp_path / "store").rglob("*.dcm"))
    assert not list((tmp_path / "store").rglob("*.tmp"))


@pytest.mark.parametrize("stamped", [True, False], ids=["stamped", "hashed"])
async def test_o_direct_refused_at_open_copies_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stamped: bool
) -> None:
    """As on a filesystem without direct I/O: the file is created, then the open fails."""
    real_open = os.open
    refused: list[str] = []

    def open_(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            refused.append(str(path))
            real_open(path, flags & ~os.O_DIRECT, mode)  # created, as the kernel does
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", open_)
    store = direct_store(tmp_path / "store")
    files = sources(tmp_path)
    results = await store.put_files(batch(files, stamped))
    for (path, _, _), result in zip(files, results, strict=True):
        assert isinstance(result, StoredObject), result
        assert Path(result.url.removeprefix("file://")).read_bytes() == path.read_bytes()
    # Tried by the copies already in flight when the first refusal came, then no more.
    assert 1 <= len(refused) <= COPIES_IN_FLIGHT, refused
    refused.clear()
    more = [
        PutRequest(r.key.replace("1.2.3.", "1.2.4."), r.source, r.expected_sha256)
        for r in batch(files, stamped)
    ]
    assert all(isinstance(r, StoredObject) for r in await store.put_files(more))
    assert not refused, "tried again after the filesystem refused it"
    assert not list((tmp_path / "store").rglob("*.tmp"))


async def test_a_direct_write_refused_goes_on_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a device whose blocks are larger than ALIGN: every direct write fails."""
    real_pwrite = os.pwrite
    refused = []

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        if direct.is_direct(fd):
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    store = direct_store(tmp_path / "store")
    files = sources(tmp_path)
    results = await store.put_files(batch(files, True))
    for (path, _, _), result in zip(files, results, strict=True):
        assert isinstance(result, StoredObject), result
        assert Path(result.url.removeprefix("file://")).read_bytes() == path.read_bytes()
    assert refused, "direct writes were tried"


def test_a_short_direct_write_leaves_the_rest_buffered_and_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A direct write that stops mid-block (a filesystem may) goes on without O_DIRECT."""
    real_pwrite = os.pwrite
    data = os.urandom(3 * ALIGN + 5)
    (tmp_path / "src").write_bytes(data)

    def pwrite(fd: int, view: memoryview, offset: int) -> int:
        return real_pwrite(fd, view[: ALIGN + 7] if direct.is_direct(fd) else view, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    fd, is_direct = direct.open_new(tmp_path / "dst", direct=True)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    try:
        with direct.Buffers().take() as buffer:
            assert direct.copy_through(src, fd, buffer) == len(data)
    finally:
        os.close(src)
        os.close(fd)
    assert is_direct and (tmp_path / "dst").read_bytes() == data
