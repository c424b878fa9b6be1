"""Read a header and decode single frames through pydicom's pixel handlers.

Compressed syntaxes (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE) decode
through the pylibjpeg plugins (ADR 0008); deflated and big endian through pydicom itself.
Only the frames asked for are decoded: a path is given to `pixel_array`, which reads one
frame's bytes, never the whole multi-frame pixel data.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import pixel_array

from libs.imaging.render import Unrenderable

DEFER_BYTES = 1 << 16  # larger values (the pixel data) are read only when asked for
DEFLATED = "1.2.840.10008.1.2.1.99"


def read_header(path: Path) -> Dataset:
    """Every element except the pixel data's value, which is deferred."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path, defer_size=DEFER_BYTES)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise Unrenderable(f"not readable as DICOM: {type(exc).__name__}: {exc}") from None
    if "PixelData" not in ds:
        raise Unrenderable("no pixel data (not an image object)")
    for name in ("Rows", "Columns", "PhotometricInterpretation"):
        if name not in ds:
            raise Unrenderable(f"image without {name}")
    return ds


def frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def default_frames(ds: Dataset) -> list[int]:
    """The first frame, and the middle one of a multi-frame object."""
    count = frame_count(ds)
    return [0] if count == 1 else [0, count // 2]


def decode_frame(path: Path, ds: Dataset, index: int) -> npt.NDArray[Any]:
    count = frame_count(ds)
    if not 0 <= index < count:
        raise Unrenderable(f"frame {index} does not exist (the object has {count})")
    syntax = ds.file_meta.get("TransferSyntaxUID", "(none)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # A deflated dataset is inflated whole by dcmread anyway; the path reader cannot.
            return pixel_array(ds if syntax == DEFLATED else path, index=index)
    except NotImplementedError as exc:
        raise Unrenderable(f"transfer syntax {syntax} cannot be decoded: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise anything on corrupt data (RuntimeError, ...)
        raise Unrenderable(
            f"frame {index} cannot be decoded ({syntax}): {type(exc).__name__}: {exc}"
        ) from None
