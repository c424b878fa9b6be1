"""Archive writers: TAR compressed with zstd (multi-threaded, every frame with its content
checksum, so a client's decompressor detects an altered byte), plain TAR, and ZIP (stored,
CRC-32 per member) for clients without zstd. All are deterministic: the same plan and settings
give the same bytes, so an evicted archive rebuilt later still matches its ETag and a resumed
download stays correct.

Blocking (file I/O and compression); the builder calls them from a thread.
"""

from __future__ import annotations

import tarfile
import zipfile
from datetime import UTC, datetime
from typing import BinaryIO, Protocol

import zstandard

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


class ArchiveWriter(Protocol):
    def begin(self, path: str, size: int) -> None: ...
    def write(self, data: bytes) -> None: ...
    def end(self) -> None: ...
    def close(self) -> None:
        """Finish the archive (trailer, final frame) and flush it to the file."""
        ...


class TarWriter:
    """POSIX pax TAR, uncompressed, into `out`."""

    def __init__(self, out: BinaryIO, *, mtime: datetime) -> None:
        self._out: BinaryIO = out
        self._mtime = int(mtime.timestamp())
        self._offset = 0
        self._size = 0

    def _put(self, data: bytes) -> None:
        self._out.write(data)
        self._offset += len(data)

    def begin(self, path: str, size: int) -> None:
        info = tarfile.TarInfo(path)
        info.size, info.mtime, info.mode = size, self._mtime, 0o644
        info.uname = info.gname = ""
        self._size = size
        self._put(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def write(self, data: bytes) -> None:
        self._put(data)

    def end(self) -> None:
        if pad := -self._offset % BLOCK:
            self._put(bytes(pad))

    def _trailer(self) -> None:
        self._put(bytes(2 * BLOCK))
        if pad := -self._offset % RECORD:
            self._put(bytes(pad))

    def close(self) -> None:
        self._trailer()


class TarZstWriter(TarWriter):
    """The same TAR, streamed through a zstd compressor (with frame checksums) into `out`."""

    def __init__(self, out: BinaryIO, *, mtime: datetime, level: int, threads: int) -> None:
        compressor = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
        self._z = compressor.stream_writer(out, closefd=False, write_return_read=True)
        super().__init__(self._z, mtime=mtime)

    def close(self) -> None:
        self._trailer()
        self._z.flush(zstandard.FLUSH_FRAME)
        self._z.close()  # type: ignore[no-untyped-call]  # unannotated in zstandard's stub


class ZipWriter:
    """ZIP with stored members (DICOM pixel data is often compressed already), ZIP64 as needed."""

    def __init__(self, out: BinaryIO, *, mtime: datetime) -> None:
        self._zip = zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True)
        t = max(mtime.astimezone(UTC), datetime(1980, 1, 1, tzinfo=UTC))  # ZIP's epoch
        self._time = (t.year, t.month, t.day, t.hour, t.minute, t.second)
        self._member: BinaryIO | None = None

    def begin(self, path: str, size: int) -> None:
        info = zipfile.ZipInfo(path, self._time)
        info.external_attr = 0o644 << 16
        info.file_size = size
        self._member = self._zip.open(info, "w", force_zip64=size >= zipfile.ZIP64_LIMIT)  # type: ignore[assignment]

    def write(self, data: bytes) -> None:
        assert self._member is not None
        self._member.write(data)

    def end(self) -> None:
        assert self._member is not None
        self._member.close()
        self._member = None

    def close(self) -> None:
        self._zip.close()
