"""Value of interest (VOI) windowing to 8-bit display values, per DICOM PS3.3 C.11.2.1.2.

Pure numpy, no DICOM parsing: the input is modality values (after the Modality LUT), the
output an 8-bit grey level (0 = black). Rounding is half up, the same for every function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

VoiFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]
VOI_FUNCTIONS: tuple[VoiFunction, ...] = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
Y_MAX = 255.0
# Floating point may land a hair below an exact .5 the standard's arithmetic reaches.
_HALF_UP = 0.5 + 1e-9


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: VoiFunction = "LINEAR"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise ValueError("window center and width must be finite numbers")
        minimum = 1.0 if self.function == "LINEAR" else 0.0
        if self.width < minimum or (self.function != "LINEAR" and self.width == 0):
            raise ValueError(f"window width must be {'>= 1' if minimum else '> 0'}")


PresetName = Literal[
    "lung", "mediastinum", "abdomen", "liver", "bone", "brain", "subdural", "stroke"
]
# Common CT presets (Hounsfield units), as viewers ship them.
PRESETS: dict[PresetName, Window] = {
    "lung": Window(-600, 1500),
    "mediastinum": Window(50, 350),
    "abdomen": Window(40, 400),
    "liver": Window(60, 160),
    "bone": Window(400, 1800),
    "brain": Window(40, 80),
    "subdural": Window(75, 215),
    "stroke": Window(40, 40),
}


def preset(name: str) -> Window:
    for known, window in PRESETS.items():
        if known == name.lower():
            return window
    raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")


def apply_window(values: npt.NDArray[np.generic], window: Window) -> npt.NDArray[np.uint8]:
    """Map modality values to 0..255 through the window's VOI function."""
    x = values.astype(np.float64, copy=False)
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        y = Y_MAX / (1.0 + np.exp(-4.0 * (x - c) / w))
    elif window.function == "LINEAR_EXACT":
        y = np.where(
            x <= c - w / 2, 0.0, np.where(x > c + w / 2, Y_MAX, ((x - c) / w + 0.5) * Y_MAX)
        )
    else:  # LINEAR: the width counts the step, hence c - 0.5 and w - 1
        low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
        if w == 1:
            y = np.where(x <= low, 0.0, Y_MAX)
        else:
            inside = ((x - (c - 0.5)) / (w - 1) + 0.5) * Y_MAX
            y = np.where(x <= low, 0.0, np.where(x > high, Y_MAX, inside))
    return np.clip(np.floor(y + _HALF_UP), 0, Y_MAX).astype(np.uint8)


def auto_window(values: npt.NDArray[np.generic]) -> Window:
    """For an image without a window: its full range, lowest value black, highest white."""
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return Window(0.0, 1.0, "LINEAR_EXACT")
    low, high = float(finite.min()), float(finite.max())
    return Window((low + high) / 2, max(high - low, 1.0), "LINEAR_EXACT")
