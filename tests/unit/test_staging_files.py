"""Staged network streams (`libs.staging.files.write_async_chunks`: Orthanc downloads,
STOW-RS parts): written whole and atomically, a short one in one worker-thread call, a long
one as it comes; a stream that fails leaves nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from libs.staging import files
from libs.staging.files import write_async_chunks


async def stream(parts: list[bytes], fail_after: int | None = None) -> AsyncIterator[bytes]:
    for i, part in enumerate(parts):
        if fail_after is not None and i == fail_after:
            raise ConnectionError("peer went away")
        await asyncio.sleep(0)
        yield part


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The worker-thread calls made (by function name)."""
    calls: list[str] = []
    real = asyncio.to_thread

    async def counted(fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(files.asyncio, "to_thread", counted)
    return calls


async def test_a_short_stream_is_written_in_one_worker_call(
    tmp_path: Path, hops: list[str]
) -> None:
    parts = [bytes([i]) * 65536 for i in range(8)]  # an instance as 64 KiB network chunks
    target = tmp_path / "ab" / "instance.dcm"
    assert await write_async_chunks(target, stream(parts), durable=False) == 8 * 65536
    assert target.read_bytes() == b"".join(parts)
    assert hops == ["write_chunks"]
    assert leftovers(target.parent) == ["instance.dcm"]


async def test_a_long_stream_is_written_as_it_comes_in_large_writes(
    tmp_path: Path, hops: list[str]
) -> None:
    parts = [bytes([i % 251]) * 65536 for i in range(64)]  # 4 MiB past a 1 MiB `whole`
    target = tmp_path / "big.dcm"
    size = await write_async_chunks(target, stream(parts), durable=True, whole=1 << 20)
    assert size == 64 * 65536 and target.read_bytes() == b"".join(parts)
    writes = hops.count("writelines")
    assert 3 <= writes <= 5, hops  # the first MiB and a bit, then one per MiB, then the rest
    assert leftovers(tmp_path) == ["big.dcm"]


@pytest.mark.parametrize("fail_after", [2, 40])
async def test_a_stream_that_fails_leaves_nothing(tmp_path: Path, fail_after: int) -> None:
    parts = [b"x" * 65536] * 64
    target = tmp_path / "gone.dcm"
    with pytest.raises(ConnectionError):
        await write_async_chunks(target, stream(parts, fail_after), whole=1 << 20)
    assert not target.exists() and leftovers(tmp_path) == []


async def test_a_retried_download_replaces_the_name_with_a_new_file(tmp_path: Path) -> None:
    target = tmp_path / "instance.dcm"
    await write_async_chunks(target, stream([b"first"]))
    first = target.stat().st_ino
    await write_async_chunks(target, stream([b"second"]))
    assert target.read_bytes() == b"second" and target.stat().st_ino != first
