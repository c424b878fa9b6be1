"""Frames of one stored instance for WADO-RS `/frames`, inside an isolated worker
(libs/dicom/isolation.py): the pixel data of hostile files is decoded there, never in the API.

A frame is given either as stored (native bytes in the file's byte order, or the one
compressed fragment run of an encapsulated frame) or uncompressed: decoded by the project's
pixel decoders (`decode.decode_frame`, ADR 0008) and written as Explicit VR Little Endian
would hold it (little-endian samples, colour pixel-interleaved).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from pydicom.encaps import get_frame
from pydicom.uid import UID

from libs.imaging.decode import decode_frame, frame_count, read_header
from libs.imaging.render import Unrenderable


class FrameMissing(Unrenderable):
    """A frame number the instance does not have."""


def read_frames(path: str, frames: tuple[int, ...], uncompressed: bool) -> list[bytes]:
    """The bytes of `frames` (numbered from 1, as in WADO-RS) of the file at `path`."""
    try:
        return _read(Path(path), frames, uncompressed)
    except (Unrenderable, MemoryError):
        raise
    except Exception as exc:  # a decoder's error on corrupt data: the file's fault
        raise Unrenderable(f"cannot read frames: {type(exc).__name__}: {exc}") from None


def _read(path: Path, frames: tuple[int, ...], uncompressed: bool) -> list[bytes]:
    ds = read_header(path)
    count = frame_count(ds)
    missing = [n for n in frames if not 1 <= n <= count]
    if missing:
        raise FrameMissing(f"frame {missing[0]} does not exist (the instance has {count})")
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1"))
    native_le = not syntax.is_compressed and syntax.is_little_endian and not syntax.is_deflated
    if uncompressed and not native_le:
        return [_little_endian(decode_frame(path, ds, n - 1)) for n in frames]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = ds.PixelData
    if syntax.is_encapsulated:
        return [get_frame(data, n - 1, number_of_frames=count) for n in frames]
    size = _frame_size(ds)
    return [data[(n - 1) * size : n * size] for n in frames]


def _frame_size(ds: object) -> int:
    rows, columns = int(ds.Rows), int(ds.Columns)  # type: ignore[attr-defined]
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    bits = int(getattr(ds, "BitsAllocated", 8) or 8)
    if bits == 1:
        raise Unrenderable("1-bit frames are only given uncompressed as stored in whole")
    return rows * columns * samples * bits // 8


def _little_endian(array: np.ndarray) -> bytes:
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
