"""Copying a file past the page cache: O_DIRECT writes from a reused, page-aligned buffer.

A copy written through the page cache fills fresh pages with bytes nobody reads again soon
(an archive), and on a VM whose free memory goes back to the host (virtio balloon free
page reporting, virtio-mem) each fresh page costs a fault on the host as well: that was
most of the storage-writer's CPU (ADR 0032). With O_DIRECT the device reads the bytes
straight from one buffer this process reuses for every file; only the tail of a file
(under `ALIGN` bytes) goes through the page cache, since O_DIRECT takes whole blocks only.

Durability is unchanged: a direct write is on the device when `pwrite` returns, but may
still sit in its volatile cache, and the new blocks' extents and the file's size are
metadata; the caller's fsync or syncfs flushes both, as it does for buffered writes.

Where a filesystem refuses O_DIRECT (at open: older tmpfs, some FUSE and network mounts;
at write: a block size larger than `ALIGN`), the copy goes through the page cache, as
before, with the same result.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

# Offsets and lengths of direct writes are multiples of this, and the buffer is aligned to
# it: the largest logical block size in common use (4Kn drives; 512e drives take it too).
ALIGN = 4096
CHUNK = 1 << 20  # the buffer: a multiple of ALIGN; most instances fit in one
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class Hash(Protocol):
    def update(self, data: memoryview, /) -> None: ...


def open_new(path: Path, *, direct: bool) -> tuple[int, bool]:
    """Create `path` (it must not exist) for writing, with O_DIRECT when `direct` and the
    filesystem takes it; the descriptor and whether it is direct."""
    if direct:
        try:
            return os.open(path, NEW_FILE | os.O_DIRECT, 0o666), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # Refused after the file was created (the check comes at open, after create):
            # the name is the caller's own temp name, so it is ours to remove.
            path.unlink(missing_ok=True)
    return os.open(path, NEW_FILE, 0o666), False


def is_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def _buffered(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)


def copy_through(src: int, dst: int, buffer: mmap.mmap, digest: Hash | None = None) -> int:
    """Copy all of `src` to `dst` (positional: from offset 0 of both, whatever their file
    positions) through `buffer`, each chunk hashed into `digest` if given; the byte count.
    On a direct `dst`, whole blocks are written straight to the device and the tail through
    the page cache (the descriptor is left buffered then)."""
    direct = is_direct(dst)
    offset = 0
    with memoryview(buffer) as view:
        while True:
            n = _fill(src, view, offset)
            if digest is not None:
                digest.update(view[:n])
            body = n - n % ALIGN if direct else n
            if body:
                direct = _write(dst, view[:body], offset, direct)
            if body < n:
                if direct:
                    _buffered(dst)
                    direct = False
                _write(dst, view[body:n], offset + body, direct)
            offset += n
            if n < len(view):
                return offset


def _fill(fd: int, view: memoryview, offset: int) -> int:
    """Read from `offset` until `view` is full or the file ends; the byte count."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def _write(fd: int, data: memoryview, offset: int, direct: bool) -> bool:
    """Write all of `data` at `offset`; whether `fd` is still direct afterwards (a write the
    filesystem refuses direct, or a short one leaving an unaligned rest, goes on buffered)."""
    done = 0
    while done < len(data):
        try:
            done += os.pwrite(fd, data[done:], offset + done)
        except OSError as exc:
            if not (direct and exc.errno == errno.EINVAL):
                raise
            _buffered(fd)
            direct = False
            continue
        if direct and done % ALIGN:
            _buffered(fd)
            direct = False
    return direct


class Buffers:
    """Page-aligned copy buffers, one per copy in progress, reused (a fresh buffer per file
    would cost the same fresh pages the page cache did). Thread-safe: list pop and append
    are atomic."""

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []

    @contextmanager
    def take(self) -> Iterator[mmap.mmap]:
        try:
            buffer = self._free.pop()
        except IndexError:
            buffer = mmap.mmap(-1, CHUNK)  # anonymous: page-aligned
        try:
            yield buffer
        finally:
            self._free.append(buffer)
