"""Stored pixel values of one frame to 8-bit display pixels, the way a viewer shows them.

Greyscale: Modality LUT (LUT sequence, else rescale slope/intercept), then VOI (an
explicit or preset window; else the file's window, the first of several, with its
VOILUTFunction; else its VOI LUT sequence; else the image's own range), then MONOCHROME1
inverted. Colour: palette through its LUTs, RGB (YBR already converted by the decoder)
scaled from its bit depth to 8 bits. Pure: arrays and a header in, an array out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut

from libs.contracts.errors import PermanentError
from libs.imaging.lut import Lut
from libs.imaging.window import VOI_FUNCTIONS, Window, apply_window, auto_window

Pixels = npt.NDArray[np.uint8]
Array = npt.NDArray[Any]


class Unrenderable(PermanentError):
    """The object has no image this converter can show (and never will on retry)."""


@dataclass(frozen=True)
class Rendered:
    pixels: Pixels  # (rows, columns) grey or (rows, columns, 3) RGB
    voi: str  # how grey levels were chosen: "requested", "file", "lut", "auto", "colour"
    window: Window | None


def little_endian(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if syntax is not None and syntax.is_little_endian is not None:
        return bool(syntax.is_little_endian)
    return ds.original_encoding[1] is not False


def modality_values(arr: Array, ds: Dataset) -> Array:
    """PS3.3 C.11.1: the Modality LUT Sequence if present, else slope and intercept."""
    if seq := ds.get("ModalityLUTSequence"):
        return Lut.from_item(seq[0], little_endian=little_endian(ds)).apply(arr)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None and intercept is None:
        return arr
    values: Array = arr.astype(np.float64) * float(1 if slope is None else slope)
    return values + float(intercept or 0)


def file_window(ds: Dataset) -> Window | None:
    """The first window of the file (C.11.2.1.2), or None when absent or unusable."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    first = [v[0] if _multi(v) else v for v in (center, width)]
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in VOI_FUNCTIONS:
        function = "LINEAR"
    try:
        return Window(float(first[0]), float(first[1]), function)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _multi(value: object) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def render_grey(arr: Array, ds: Dataset, requested: Window | None = None) -> Rendered:
    values = modality_values(arr, ds)
    window: Window | None = requested
    if window is not None:
        out, voi = apply_window(values, window), "requested"
    elif (window := file_window(ds)) is not None:
        out, voi = apply_window(values, window), "file"
    elif seq := ds.get("VOILUTSequence"):
        lut = Lut.from_item(seq[0], little_endian=little_endian(ds))
        scaled = lut.apply(values) * (255.0 / ((1 << lut.bits) - 1))
        out, voi, window = np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8), "lut", None
    else:
        window = auto_window(values)
        out, voi = apply_window(values, window), "auto"
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255 - out
    return Rendered(out, voi, window)


def to_8bit(arr: Array, max_value: int) -> Pixels:
    if max_value <= 255:
        return np.clip(arr, 0, 255).astype(np.uint8)
    scaled: Pixels = np.floor(arr.astype(np.float64) * (255.0 / max_value) + 0.5).astype(np.uint8)
    return scaled


def render_colour(arr: Array, ds: Dataset) -> Rendered:
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return Rendered(to_8bit(rgb, np.iinfo(rgb.dtype).max), "colour", None)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise Unrenderable(f"{photometric} pixels of shape {arr.shape} are not an RGB image")
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    return Rendered(to_8bit(arr, (1 << bits) - 1), "colour", None)


def render(arr: Array, ds: Dataset, requested: Window | None = None) -> Rendered:
    """One decoded frame (as pydicom returns it: YBR already converted to RGB) to display."""
    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if samples == 1 and photometric in {"MONOCHROME1", "MONOCHROME2"}:
        if arr.ndim != 2:
            raise Unrenderable(f"a greyscale frame must be 2-D, got shape {arr.shape}")
        return render_grey(arr, ds, requested)
    if (samples == 1 and photometric == "PALETTE COLOR") or samples == 3:
        return render_colour(arr, ds)
    raise Unrenderable(
        f"photometric interpretation {photometric or '(none)'} with {samples} samples "
        "per pixel is not supported"
    )
