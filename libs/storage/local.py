"""Local-disk storage: temp file, fsync, rename; the copy's SHA-256 is verified before rename
(or the source shown unchanged since it was hashed, ADR 0019). With `enable_direct_io()`
copies are written past the page cache where the filesystem allows (O_DIRECT,
`libs.storage.direct`), a batch's copies `COPIES_IN_FLIGHT` at a time (ADR 0032). A file one
of our own sources staged (`link_own()`: the staging folders of the DICOM receiver, the
Orthanc and ISO watchers, the PACS watcher's C-GET and STOW-RS, `OwnStagingSettings`) is not
copied at all when it is on the same filesystem: the stored object is a second name for its
inode (ADR 0034).

Temp files live in one folder, `<root>/.partial/` (on the same filesystem, so the rename is
atomic), never beside the objects: a writer killed mid-write leaves its temp file there, out
of every listing, and `sweep_partial()` removes such leftovers once they are older than any
write in progress can be, without walking the store."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import itertools
import mmap
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

from libs.contracts.errors import PermanentError
from libs.staging.files import sync_folder
from libs.storage.base import PutRequest, StoredObject, check_key, register_backend
from libs.storage.direct import Buffers, copy_through, is_direct, open_new
from libs.storage.stamp import is_own, own_roots, shows_stamp

CHUNK = 1 << 20
COPIES_IN_FLIGHT = 4  # direct writes wait for the device: several at once keep it busy
PARTIAL = ".partial"  # temp files of writes in progress (or of writers that died mid-write)


def path_from_file_url(url: str) -> Path:
    """`file:///abs/path` or `file://./relative` (relative to the working directory)."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise ValueError(f"not a file:// URL: {url!r}")
    raw = parts.netloc + parts.path if parts.netloc in {".", ".."} else parts.path
    # Bytes first: file names need not be UTF-8 (fsdecode keeps them round-trippable).
    # abspath, not resolve(): no symlink lookups per message on the hot path.
    return Path(os.path.abspath(os.fsdecode(unquote_to_bytes(raw))))


def file_url(path: Path) -> str:
    return Path(os.path.abspath(path)).as_uri()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class LocalStore:
    def __init__(self, url: str) -> None:
        self.root = path_from_file_url(url).resolve()
        self.url = file_url(self.root)
        self._partial_made = False
        self._direct = False  # enable_direct_io(); off again if the filesystem refuses it
        self._own: tuple[str, ...] = ()  # link_own()
        self._buffers = Buffers()  # one per copy in flight, reused
        # Threads start on the first batch (a store that only reads never starts any).
        self._copies = ThreadPoolExecutor(COPIES_IN_FLIGHT, thread_name_prefix="copy")

    def enable_direct_io(self) -> None:
        """Write copies with O_DIRECT from now on, `COPIES_IN_FLIGHT` at a time (ADR 0032)."""
        self._direct = True

    def link_own(self, folders: Sequence[os.PathLike[str] | str]) -> None:
        """Files inside `folders` (our own sources' staging: written, closed and recorded
        before they are announced, never written again) are stored as a hard link to the
        staged file instead of a copy, when it still shows the stamp it was hashed with and
        the kernel can link it (same filesystem); otherwise copied as any file (ADR 0034)."""
        self._own = own_roots(folders)

    def path_for(self, key: str) -> Path:
        # check_key admits plain names only (no '..', no '/' at the start), so the joined
        # path stays under the root without resolving it on every call.
        return self.root / check_key(key)

    def url_for(self, key: str) -> str:
        return file_url(self.path_for(key))

    def _temp_for(self, target: Path) -> Path:
        folder = self.root / PARTIAL
        if not self._partial_made:
            folder.mkdir(parents=True, exist_ok=True)
            self._partial_made = True
        return folder / f".{target.name}.{uuid.uuid4().hex}.tmp"

    def sweep_partial(self, older_than_seconds: float) -> int:
        """Remove temp files not written to for `older_than_seconds` (left by a writer that
        died mid-write); returns how many. Blocking: call it in a thread."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        try:
            entries = list(os.scandir(self.root / PARTIAL))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:  # finished (renamed) or swept by another writer
                continue
        return removed

    async def put_file(self, key: str, source: Path, *, expected_sha256: str) -> StoredObject:
        return await asyncio.to_thread(self._put_file, key, source, expected_sha256)

    def _put_file(self, key: str, source: Path, expected: str) -> StoredObject:
        target = self.path_for(key)
        if target.exists():
            return self._existing(key, target, expected)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp, size = self._copy(target, source, expected, durable=True)
        try:
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        finally:
            tmp.unlink(missing_ok=True)
        return StoredObject(self.url_for(key), size, expected, created=True)

    async def put_files(self, items: Sequence[PutRequest]) -> list[StoredObject | Exception]:
        """`put_file` for a batch with group durability: every copy is written and checked,
        then one syncfs makes their bytes durable, then they are renamed into place and a
        second syncfs makes the names durable; two flushes per batch instead of two fsyncs
        per file. Direct copies run `COPIES_IN_FLIGHT` at a time (a direct write waits for
        the device). Per item its object, or the error it failed with."""
        return await asyncio.to_thread(self._put_files, items)

    def _put_files(self, items: Sequence[PutRequest]) -> list[StoredObject | Exception]:
        out: list[StoredObject | Exception | None] = [None] * len(items)
        todo: list[tuple[int, Path, PutRequest]] = []
        folders: set[Path] = set()  # made in this batch: one mkdir per series, not per file
        for n, item in enumerate(items):
            try:
                target = self.path_for(item.key)
                if target.exists():
                    out[n] = self._existing(item.key, target, item.expected_sha256)
                    continue
                if target.parent not in folders:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    folders.add(target.parent)
                todo.append((n, target, item))
            except Exception as exc:  # this item only
                out[n] = exc
        staged: list[tuple[int, Path, Path, int]] = []
        named = 0  # staged copies renamed into place (their temp files are gone)
        try:
            # Direct: COPIES_IN_FLIGHT threads, each copying every COPIES_IN_FLIGHT-th item in
            # turn (one hand-off per thread and batch); else one after the other, here.
            width = COPIES_IN_FLIGHT if self._direct else 1
            lanes = [todo[k::width] for k in range(width)]
            done = (
                list(self._copies.map(self._stage_all, lanes))
                if width > 1
                else [self._stage_all(todo)]
            )
            copies = [done[k % width][k // width] for k in range(len(todo))]
            for (n, target, _), copied in zip(todo, copies, strict=True):
                if isinstance(copied, Exception):
                    out[n] = copied
                else:
                    staged.append((n, copied[0], target, copied[1]))
            if staged:
                sync_folder(self.root)  # the copies' bytes, before any is named
                for n, tmp, target, size in staged:
                    os.replace(tmp, target)
                    named += 1
                    out[n] = StoredObject(
                        self.url_for(items[n].key), size, items[n].expected_sha256, created=True
                    )
                sync_folder(self.root)  # the names
        finally:
            for _, tmp, _, _ in staged[named:]:
                tmp.unlink(missing_ok=True)
        return [o if o is not None else RuntimeError("not stored") for o in out]

    def _stage_all(
        self, jobs: Sequence[tuple[int, Path, PutRequest]]
    ) -> list[tuple[Path, int] | Exception]:
        """Each item's copy (its temp file and size), or the error it failed with."""
        out: list[tuple[Path, int] | Exception] = []
        for _, target, item in jobs:
            try:
                out.append(self._copy(target, item.source, item.expected_sha256, item.source_stamp))
            except Exception as exc:  # this item only
                out.append(exc)
        return out

    def _existing(self, key: str, target: Path, expected: str) -> StoredObject:
        existing = sha256_file(target)
        if existing != expected:
            raise PermanentError(
                f"refusing to overwrite {key}: it holds different content ({existing[:12]}…)"
            )
        return StoredObject(self.url_for(key), target.stat().st_size, existing, created=False)

    def _copy(
        self,
        target: Path,
        source: Path,
        expected: str,
        stamp: str | None = None,
        *,
        durable: bool = False,
    ) -> tuple[Path, int]:
        """Copy to a temporary file in `.partial/` (fsynced if `durable`, else the caller's
        syncfs makes it durable), past the page cache where the filesystem allows
        (`libs.storage.direct`): without hashing while the source shows the stamp it had
        when it was hashed (before and after the copy), else hashing in the same pass. The
        target's folder exists."""
        tmp = self._temp_for(target)
        try:
            with source.open("rb", buffering=0) as src:
                if stamp is not None and is_own(str(source), self._own):
                    size = _link(src.fileno(), tmp, stamp)
                    if size >= 0:
                        if durable:  # its data and metadata, whichever source wrote it
                            os.fsync(src.fileno())
                        return tmp, size
                fd, direct = open_new(tmp, direct=self._direct)
                self._direct = direct  # refused at open: not tried again on this store
                try:
                    size = self._copy_fd(src.fileno(), fd, expected, stamp)
                    if durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, size

    def _copy_fd(self, fd_in: int, fd_out: int, expected: str, stamp: str | None) -> int:
        with self._buffers.take() as buffer:
            if stamp is not None and (size := _stamped_copy(fd_in, fd_out, stamp, buffer)) >= 0:
                return size
            digest = hashlib.sha256()
            size = copy_through(fd_in, fd_out, buffer, digest)
        if digest.hexdigest() != expected:
            raise PermanentError(
                f"source changed since it was extracted: SHA-256 {digest.hexdigest()[:12]}… "
                f"!= {expected[:12]}…"
            )
        return size

    async def size(self, key: str) -> int | None:
        try:
            return self.path_for(key).stat().st_size
        except FileNotFoundError:
            return None

    async def read(self, key: str, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        with self.path_for(key).open("rb") as f:
            while chunk := await asyncio.to_thread(f.read, chunk_size):
                yield chunk
                if len(chunk) < chunk_size:  # a regular file: a short read is its end
                    return

    async def keys(self, prefix: str = "", *, start_after: str = "") -> AsyncIterator[str]:
        walk = _walk_sorted(self.root, "", prefix, start_after)
        while batch := await asyncio.to_thread(_take, walk, 1000):
            for key in batch:
                yield key


def _take(it: Iterator[str], n: int) -> list[str]:
    return list(itertools.islice(it, n))


def _walk_sorted(root: Path, base: str, prefix: str, start_after: str) -> Iterator[str]:
    """Keys below `root` in the order their strings sort (as GCS lists them): a folder sorts
    as its name plus '/', so `1.2.3/` comes before `1.2/`, as the keys themselves do. Whole
    folders before `start_after` (or outside `prefix`) are never opened."""
    with os.scandir(root) as it:
        entries = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in it]
    for name, entry in sorted(entries, key=lambda pair: pair[0]):
        key = base + name
        if name.endswith("/"):
            if key == PARTIAL + "/":  # temp files, not objects
                continue
            if not (key.startswith(prefix) or prefix.startswith(key)):
                continue
            if key < start_after and not start_after.startswith(key):
                continue
            yield from _walk_sorted(Path(entry.path), key, prefix, start_after)
        elif entry.is_file(follow_symlinks=False) and key.startswith(prefix) and key > start_after:
            yield key


def _stamped_copy(fd_in: int, fd_out: int, stamp: str, buffer: mmap.mmap) -> int:
    """Copy `fd_in` to `fd_out` without hashing if `fd_in` shows `stamp` before and after:
    direct from `buffer` when `fd_out` is direct, else in the kernel (copy_file_range: no
    pass through this process). Its size, or -1 with `fd_out` emptied when the source does
    not show the stamp or the kernel cannot copy between them: hash instead."""
    if not shows_stamp(os.fstat(fd_in), stamp):
        return -1
    size = os.fstat(fd_in).st_size
    if is_direct(fd_out):
        done = copy_through(fd_in, fd_out, buffer)
    else:
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(fd_in, fd_out, size - done, done, done)
                if n == 0:
                    break
                done += n
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            done = -1
    if done == size and shows_stamp(os.fstat(fd_in), stamp):
        return size
    os.ftruncate(fd_out, 0)
    return -1


def _link(fd_in: int, tmp: Path, stamp: str) -> int:
    """Give the open file `fd_in` the new name `tmp` (a hard link: no byte is copied) if it
    is a regular file still showing `stamp`; its size, or -1 (nothing made) when it does not
    show the stamp or the kernel will not link it here (another filesystem or mount,
    protected hard links, too many links): copy instead. The link is made to the inode
    behind the descriptor (linkat through /proc/self/fd), so a name swapped meanwhile cannot
    put another file in its place; the new name is checked to be that inode, unchanged."""
    before = os.fstat(fd_in)
    if not stat.S_ISREG(before.st_mode) or not shows_stamp(before, stamp):
        return -1
    try:
        # linkat(fds, "<fd_in>", AT_FDCWD, tmp, AT_SYMLINK_FOLLOW), fds being /proc/self/fd
        # (with no directory descriptor os.link calls link(), which does not follow it).
        fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.link(str(fd_in), tmp, src_dir_fd=fds, follow_symlinks=True)
        finally:
            os.close(fds)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        return -1
    after = os.lstat(tmp)
    same = (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_dev,
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    if not same:  # written to between the check and the link (nothing should): copy it
        tmp.unlink(missing_ok=True)
        return -1
    return after.st_size


# link refused: another filesystem or mount, protected_hardlinks, a filesystem without hard
# links, the inode's link limit, no /proc.
_NO_LINK = frozenset(
    {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOENT}
)


# copy_file_range refused: not supported here, across filesystems (before Linux 5.19), etc.
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


register_backend("file", LocalStore)
