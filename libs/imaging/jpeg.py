"""8-bit display pixels to JPEG bytes: the full-size preview and a bounded thumbnail."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image


def encode_jpeg(
    pixels: npt.NDArray[np.uint8], *, quality: int, max_side: int | None = None
) -> tuple[bytes, int, int]:
    """JPEG bytes and their width and height; `max_side` shrinks (never enlarges) to fit."""
    image = Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")
    if max_side is not None:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue(), image.width, image.height
