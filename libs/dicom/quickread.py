"""The elements of a well-formed file's header straight from its bytes, without pydicom.

`dcmread` costs the extractor more than its two SHA-256 passes: file meta objects, a
Dataset, a Tag and an attribute write per element. Nearly every file an archive sees is
plain: Explicit VR Little Endian (natively or as the frame of an encapsulated syntax),
defined lengths, known VRs, tags in order. For such a file `quick_read` walks the
elements itself (a bounds-checked `unpack_from` per element) and gives the same
`RawDataElement`s `dcmread(stop_before_pixels=True)` would, so the header and the
DICOM JSON are built by the same code from the same values.

Anything else returns None and the file takes pydicom's path (`extract.py`), which
judges it: this module never refuses a file, it only declines to read it. Declined:
another transfer syntax (implicit VR, big endian, deflate, none), a command group, a
sequence or any value of undefined length, an unknown VR, an item or delimiter tag, a
tag out of order or repeated, a value or element header past EOF, a value over the
deferral size, a Specific Character Set pydicom would need to correct. tests/unit/
test_quickread.py checks that both paths give the same result for every file of pydicom's
test data, the fuzz corpus and the synthetic corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from struct import Struct

from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR

from libs.dicom.content import PIXEL_TAGS

# Transfer syntaxes whose dataset is Explicit VR Little Endian: the native one and the
# encapsulated ones (JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE, MPEG/HEVC video).
_EXPLICIT_LE = frozenset(
    {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"}
    | {f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81, 90, 91, 92, 93)}
    | {f"1.2.840.10008.1.2.4.{n}" for n in (100, 101, 102, 103, 104, 105, 106, 107, 108)}
    | {f"1.2.840.10008.1.2.4.{n}" for n in (201, 202, 203)}
)
_VRS = {vr.encode(): str(vr) for vr in STANDARD_VR}
_LONG = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
# What pydicom stores for an empty value: b"" for text, None for numbers and binary.
_EMPTY: dict[str, bytes | None] = {
    str(vr): b"" if empty_value_for_VR(vr, raw=True) == b"" else None for vr in STANDARD_VR
}
_HEAD = Struct("<HH2sH")
_LENGTH = Struct("<L")
_DEFER_SIZE = 1 << 20  # as `extract.py` asks of pydicom: a longer value would be deferred
_CHARSET = 0x00080005
_TRANSFER_SYNTAX = 0x00020010

Elements = dict[int, RawDataElement]


@dataclass(frozen=True)
class QuickRead:
    meta: Elements  # the file meta group, as read
    elements: Elements  # the dataset's top-level elements up to the pixel data, in order
    end: int  # where the walk stopped: the pixel data element's tag, or the end of the file


def quick_read(data: bytes) -> QuickRead | None:
    """The file's elements as `dcmread(stop_before_pixels=True)` reads them, or None when
    the file is anything but plain (see the module docstring)."""
    size = len(data)
    if size < 140 or data[128:132] != b"DICM":
        return None
    meta, pos = _walk(data, 132, meta=True)
    if meta is None or not meta or next(iter(meta)) == _TRANSFER_SYNTAX:
        return None  # pydicom converts the first meta element in place
    syntax = meta.get(_TRANSFER_SYNTAX)
    if syntax is None or not isinstance(syntax.value, bytes):
        return None
    if syntax.value.decode(default_encoding).rstrip("\0 ") not in _EXPLICIT_LE:
        return None
    if pos + 8 > size or data[pos : pos + 2] == b"\0\0":  # no dataset, or a command group
        return None
    elements, end = _walk(data, pos, meta=False)
    if not elements:
        return None
    return QuickRead(meta, elements, end)


def _walk(data: bytes, pos: int, *, meta: bool) -> tuple[Elements | None, int]:
    """Explicit VR little endian elements from `pos`: the file meta group (stops at the
    first other group) or the dataset (stops at the pixel data or at the end)."""
    size = len(data)
    out: Elements = {}
    last = -1
    head, length32 = _HEAD.unpack_from, _LENGTH.unpack_from
    while pos < size:
        if pos + 8 > size:
            return None, pos  # an element header cut by EOF: pydicom's path says so
        group, elem, raw_vr, length = head(data, pos)
        tag = group << 16 | elem
        if meta and group != 0x0002:
            break
        if not meta and tag in PIXEL_TAGS:
            break
        vr = _VRS.get(raw_vr)
        if vr is None or tag <= last or group == 0xFFFE:
            return None, pos
        if vr in _LONG:
            if pos + 12 > size:
                return None, pos
            (length,) = length32(data, pos + 8)
            start = pos + 12
        else:
            start = pos + 8
        end = start + length
        if length == 0xFFFFFFFF or end > size or vr == "SQ":
            return None, pos
        if length > _DEFER_SIZE and tag != _CHARSET:
            return None, pos
        value = data[start:end] if length else _EMPTY[vr]
        out[tag] = RawDataElement(BaseTag(tag), vr, length, value, start, False, True)
        last, pos = tag, end
    return out, pos
