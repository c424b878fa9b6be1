"""What the receiver does with one C-STORE: write the bytes it was sent, durably, under a name
of its own (never a UID from the wire), and describe it for the ledger."""

from __future__ import annotations

import asyncio
import collections
import ctypes
import functools
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from libs.db.ledger import NewFile
from libs.runtime.logging import get_logger

log = get_logger(__name__)

PREAMBLE = b"\x00" * 128 + b"DICM"
MAX_QUEUED = 64  # fragments queued for one writev at most (IOV_MAX is 1024)
SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages, no wait


@dataclass(frozen=True)
class Peer:
    """Who is sending on one association; `assoc_id` is the correlation id of its instances."""

    calling_ae: str
    address: str
    port: int
    assoc_id: str

    @property
    def origin(self) -> str:
        return f"{self.calling_ae}@{self.address}:{self.port}"


@dataclass(frozen=True)
class Staged:
    path: Path
    size: int


def staging_folder(root: Path, now: datetime | None = None) -> Path:
    """One folder per hour, so a batch fsyncs few directories and folders stay small."""
    return root / (now or datetime.now(UTC)).strftime("%Y%m%d%H")


def create_file(root: Path) -> tuple[Path, int]:
    """A new, empty staging file under a name of ours in the hour's folder, open for
    writing."""
    folder = staging_folder(root)
    path = folder / f"{uuid.uuid4().hex}.dcm"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return path, os.open(path, flags, 0o640)
    except FileNotFoundError:  # the hour's first instance (mkdir only then)
        folder.mkdir(parents=True, exist_ok=True)
        return path, os.open(path, flags, 0o640)


class FilePool:
    """Empty staging files created ahead of need, in a worker thread: creating a file is the
    event loop's largest system call per instance (ext4 inode allocation, ~12% of the loop
    thread's CPU measured with perf), and the loop thread is what bounds one receiver
    process. `take` hands one out (None when none is ready: the caller creates its own);
    `refill_soon` tops the pool up off the loop once half of it is used, one worker call
    for `size // 2` files. Unused files are removed by `close`; after a crash (kill -9) they
    are empty files no ledger row names, removed with their hour folder by the staging
    cleanup."""

    def __init__(self, root: Path, size: int = 16) -> None:
        self.root = root
        self.size = size
        self._ready: collections.deque[tuple[Path, int]] = collections.deque()
        self._refill: asyncio.Future[None] | None = None
        self._closed = False

    def take(self) -> tuple[Path, int] | None:
        try:
            made = self._ready.popleft()
        except IndexError:
            made = None
        self.refill_soon()
        return made

    def refill_soon(self) -> None:
        """On the event loop: start a refill in a worker thread when half is used."""
        if self._closed or self._refill is not None or len(self._ready) > self.size // 2:
            return
        self._refill = asyncio.get_running_loop().run_in_executor(None, self.fill)
        self._refill.add_done_callback(self._filled)

    def fill(self) -> None:
        """Blocking: create files until `size` are ready."""
        while len(self._ready) < self.size and not self._closed:
            self._ready.append(create_file(self.root))

    def _filled(self, fut: asyncio.Future[None]) -> None:
        self._refill = None
        failed = not fut.cancelled() and fut.exception() is not None
        if failed:  # disk full and the like: instances create their own files meanwhile
            log.warning("cannot create staging files ahead", error=repr(fut.exception()))
        if self._closed:
            self._discard_ready()
        elif not failed:  # files taken while it ran
            self.refill_soon()

    async def close(self) -> None:
        """No more files; the unused ones are removed."""
        self._closed = True
        if self._refill is not None:
            await asyncio.wait([self._refill])
        self._discard_ready()

    def _discard_ready(self) -> None:
        while self._ready:
            path, fd = self._ready.popleft()
            os.close(fd)
            path.unlink(missing_ok=True)


class StagingFile:
    """One instance being received: preamble, file meta, then the data set fragments exactly
    as the sender encoded them, written as they arrive (a 2 GB multi-frame never sits in
    memory; the fragments of the PDUs at hand go in one writev: `queue`, `flush`, which the
    caller runs before `finish`). `finish` makes it durable, `discard` removes it (abort,
    failure). The name is ours, never a UID from the wire. Written under its final name (a
    rename cost 0.2-0.3 ms more per instance): a file left by a crash mid-receive has no
    ledger row, so nothing reads it, and the sender, never answered, sends it again."""

    def __init__(self, root: Path, meta: bytes, pool: FilePool | None = None) -> None:
        made = pool.take() if pool is not None else None
        self.path, self._fd = made or create_file(root)
        self.folder = self.path.parent
        self.size = 0
        self._queued = []
        self.queue(memoryview(PREAMBLE + meta))  # written with the first fragments

    _fd: int | None
    _queued: list[memoryview]

    def write(self, data: bytes | memoryview) -> None:
        assert self._fd is not None
        self.flush()  # what was queued comes first
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.size += len(data)

    def queue(self, view: memoryview) -> None:
        """Write `view` with the next `flush` (one writev for the fragments of several
        PDUs: a write system call costs ~10 us beyond its bytes, 7 per instance before).
        The caller keeps `view` valid until then."""
        self._queued.append(view)
        self.size += len(view)
        if len(self._queued) >= MAX_QUEUED:
            self.flush()

    def flush(self) -> None:
        """Write what `queue` holds (OSError: the disk is full, or the like)."""
        queued, self._queued = self._queued, []
        assert self._fd is not None or not queued
        while queued:
            done = os.writev(self._fd, queued)  # type: ignore[arg-type]
            while queued and done >= len(queued[0]):
                done -= len(queued[0])
                queued.pop(0)
            if done:
                queued[0] = queued[0][done:]

    def start_writeback(self) -> None:
        """Ask the kernel to start writing the file's pages, without waiting (Linux
        sync_file_range). `make_durable` does it for every file of a group before the first
        fdatasync: their blocks are then allocated in one journal transaction, which the
        first fdatasync commits for all (4 files synced one after another in one thread:
        2.4 ms, with this first 1.4-1.7 ms, as fast as 4 threads in parallel). Only a hint:
        durability comes from `finish`."""
        sync_file_range = _libc_sync_file_range()
        if self._fd is not None and sync_file_range is not None:
            sync_file_range(self._fd, 0, 0, SYNC_FILE_RANGE_WRITE)

    def finish(self, *, fsync: bool) -> Staged:
        """fdatasync (when `fsync`) and close the file. Its folder is fsynced once per group
        of instances (`make_durable`), before any of them is recorded or answered. Blocking:
        run it off the event loop."""
        assert self._fd is not None and not self._queued, "flush() before finish()"
        fd, self._fd = self._fd, None
        try:
            if fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        return Staged(self.path, self.size)

    def discard(self) -> None:
        self._queued = []
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self.path.unlink(missing_ok=True)


def make_durable(files: Sequence[StagingFile], *, fsync: bool = True) -> list[OSError | None]:
    """Make a group of received files durable in one call (the committer runs it in one
    worker thread per group, so an instance costs no thread hand-off of its own): start the
    writeback of all, fdatasync and close each, then fsync their folders. Returns, per file,
    the error that kept it from being durable (None: durable); raises OSError when a folder
    fsync failed (then none of the group is)."""
    if fsync:
        for f in files:
            f.start_writeback()
    errors: list[OSError | None] = []
    for f in files:
        try:
            f.finish(fsync=fsync)
        except OSError as exc:
            errors.append(exc)
        else:
            errors.append(None)
    if fsync:
        sync_folders({f.folder for f, error in zip(files, errors, strict=True) if error is None})
    return errors


@functools.cache
def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def sync_folders(folders: Collection[Path]) -> None:
    """fsync each folder: the names created in it survive a crash. One call for a group of
    instances (usually one hour folder): a folder fsync per instance cost ~2 ms each.

    Not `libs.staging.files.sync_folder` (one syncfs per batch, as the other sources use):
    syncfs flushes every dirty page of the filesystem, the pipeline's writes included
    (measured slower)."""
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def new_file(staged: Staged, peer: Peer) -> NewFile:
    return NewFile(
        source=f"dicom:{peer.calling_ae}",
        uri=staged.path.as_uri(),
        origin=peer.origin,
        size=staged.size,
        correlation_id=peer.assoc_id,
    )


def free_mb(root: Path) -> float:
    root.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(root).free / 2**20
