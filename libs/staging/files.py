"""Staging: bytes a source fetched (an instance downloaded from Orthanc, a file read out of an
ISO image) are written here before they are discovered, since the pipeline reads files by
`file://` URI (claim-check). Writes are streamed to a temporary file beside the target, then
renamed: the extractor never sees half a file, and a retried write replaces the earlier one
whole. Durability: either each file is fsynced (`durable=True`), or a batch of files is
written without and made durable with one `sync_folder` before it is recorded (an fsync per
small file costs several times the write itself)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
WHOLE = 8 << 20  # a network stream up to this size is written in one worker-thread call


def _tmp(target: Path) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")


def _commit(f: BinaryIO, tmp: Path, target: Path, durable: bool) -> None:
    f.flush()
    if durable:
        os.fsync(f.fileno())
    f.close()
    tmp.replace(target)


def sync_folder(folder: Path) -> None:
    """Make everything written to `folder`'s filesystem durable: one syncfs(2)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        if getattr(libc, "syncfs", None) is None:
            os.sync()  # not Linux: the whole machine, still correct
        elif libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {folder}: {os.strerror(err)}")
    finally:
        os.close(fd)


def write_chunks(target: Path, chunks: Iterable[bytes], *, durable: bool = True) -> int:
    """Write `chunks` to `target` atomically; returns the byte count."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(target)
    size = 0
    f = tmp.open("wb")
    try:
        for chunk in chunks:
            f.write(chunk)
            size += len(chunk)
        _commit(f, tmp, target, durable)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
    return size


def copy_stream(
    target: Path, source: BinaryIO, limit: int | None = None, *, durable: bool = True
) -> int:
    """Copy a readable stream (at most `limit` bytes) to `target` atomically."""

    def chunks() -> Iterable[bytes]:
        left = limit
        while left is None or left > 0:
            chunk = source.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk

    return write_chunks(target, chunks(), durable=durable)


async def write_async_chunks(
    target: Path, chunks: AsyncIterator[bytes], *, durable: bool = True, whole: int = WHOLE
) -> int:
    """Like `write_chunks` for a network stream; disk work runs in a worker thread. A stream
    of up to `whole` bytes is gathered in memory and written, named (and synced) in one
    worker-thread call: a thread hop per network chunk cost the Orthanc watcher more than the
    writes themselves. A longer stream goes to disk as it comes, in writes of at least CHUNK
    bytes, so memory stays bounded by `whole` + CHUNK."""
    it = aiter(chunks)
    head: list[bytes] = []
    size = 0
    async for chunk in it:
        head.append(chunk)
        size += len(chunk)
        if size > whole:
            break
    else:
        return await asyncio.to_thread(write_chunks, target, head, durable=durable)
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    tmp = _tmp(target)
    f = await asyncio.to_thread(tmp.open, "wb")
    try:
        await asyncio.to_thread(f.writelines, head)
        head, pending = [], 0
        async for chunk in it:
            head.append(chunk)
            size += len(chunk)
            pending += len(chunk)
            if pending >= CHUNK:
                await asyncio.to_thread(f.writelines, head)
                head, pending = [], 0
        await asyncio.to_thread(f.writelines, head)
        await asyncio.to_thread(_commit, f, tmp, target, durable)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
    return size
