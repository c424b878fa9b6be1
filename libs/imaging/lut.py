"""Lookup tables from a DICOM item (Modality LUT Sequence, VOI LUT Sequence), PS3.3 C.11.1/C.11.2.

Written here rather than taken from `pydicom.pixels.apply_modality_lut`/`apply_voi`
(pydicom 3.0): those build the index array in the LUT's entry type (`uint8` for an 8-bit
VOI LUT, so input values above 255 wrap) or name a dtype after the descriptor's bit depth
(`uint12` for a 12-bit Modality LUT, which numpy rejects). Here the index is clipped in
int64 and the table is read as 16-bit words whatever its nominal depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset


@dataclass(frozen=True)
class Lut:
    first_mapped: int
    bits: int  # nominal bits per entry (LUTDescriptor[2])
    table: npt.NDArray[np.int64]

    @classmethod
    def from_item(cls, item: Dataset, *, little_endian: bool) -> Lut:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        entries = entries or 65536  # 0 means 2^16 entries
        raw = item.LUTData
        if isinstance(raw, bytes):  # OW: words in the dataset's byte order
            data = np.frombuffer(raw, dtype="<u2" if little_endian else ">u2")
        else:
            data = np.asarray([raw] if isinstance(raw, int) else list(raw), dtype=np.int64)
        if data.size < entries:
            raise ValueError(f"LUT has {data.size} entries, its descriptor says {entries}")
        if not 1 <= bits <= 16:
            raise ValueError(f"LUT entries of {bits} bits are not supported")
        return cls(first, bits, data[:entries].astype(np.int64))

    def apply(self, values: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """Values below the first mapped one take the first entry, above the last the last."""
        index = np.rint(values).astype(np.int64) - self.first_mapped
        out: npt.NDArray[np.int64] = self.table[np.clip(index, 0, self.table.size - 1)]
        return out
