"""Staging: bytes a source fetched (an instance downloaded from Orthanc, a file read out of an
ISO image) are written here before they are discovered, since the pipeline reads files by
`file://` URI (claim-check). Writes are streamed to a temporary file beside the target,
fsynced, then renamed: the extractor never sees half a file, and a retried write replaces
the earlier one whole."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


def _tmp(target: Path) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")


def _commit(f: BinaryIO, tmp: Path, target: Path) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()
    tmp.replace(target)


def write_chunks(target: Path, chunks: Iterable[bytes]) -> int:
    """Write `chunks` to `target` atomically; returns the byte count."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(target)
    size = 0
    f = tmp.open("wb")
    try:
        for chunk in chunks:
            f.write(chunk)
            size += len(chunk)
        _commit(f, tmp, target)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
    return size


def copy_stream(target: Path, source: BinaryIO, limit: int | None = None) -> int:
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

    return write_chunks(target, chunks())


async def write_async_chunks(target: Path, chunks: AsyncIterator[bytes]) -> int:
    """Like `write_chunks` for a network stream; disk writes run in a thread."""
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    tmp = _tmp(target)
    size = 0
    f = await asyncio.to_thread(tmp.open, "wb")
    try:
        async for chunk in chunks:
            await asyncio.to_thread(f.write, chunk)
            size += len(chunk)
        await asyncio.to_thread(_commit, f, tmp, target)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
    return size
