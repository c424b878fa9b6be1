"""The elements of a well-formed file's header straight from its bytes, without pydicom.

`dcmread` costs the extractor more than its two SHA-256 passes: file meta objects, a
Dataset, a Tag and an attribute write per element. Nearly every file an archive sees is
plain: Explicit VR Little Endian (natively or as the frame of an encapsulated syntax) or
Implicit VR Little Endian, known VRs, tags in order, well-formed sequence items. For
such a file `quick_read` walks the elements itself (a bounds-checked `unpack_from` per
element) and gives the same top-level `RawDataElement`s `dcmread(stop_before_pixels=True)`
would, plus the items of its sequences, so the header and the DICOM JSON are built from
the same values.

Anything else returns None and the file takes pydicom's path (`extract.py`), which
judges it: this module never refuses a file, it only declines to read it. Declined:
another transfer syntax (big endian, deflate, private, none), with implicit VR an
element whose VR the dictionary does not settle (private, ambiguous such as US or SS,
unknown) or a dataset starting like explicit VR (pydicom switches), a command group, a
value other than a sequence's or an item's of undefined length, an unknown VR, a stray
item or delimiter tag, a tag out of order or repeated, an element or item past EOF or
past its parent's end, a top-level value over the deferral size, an item with its own
Specific Character Set, sequences nested deeper than `_MAX_DEPTH`.
tests/unit/test_quickread.py and tests/integration/test_fuzz_corpus.py check that both
paths give the same result for every file of pydicom's test data, the fuzz corpus and
synthetic files.
"""

from __future__ import annotations

from dataclasses import dataclass
from struct import Struct

from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR

from libs.dicom.content import PIXEL_TAGS

_IMPLICIT_LE = "1.2.840.10008.1.2"
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
# A sequence's items: each item's elements and the items of its own sequences, by tag.
Items = list[tuple[Elements, "Sequences"]]
Sequences = dict[int, Items]

_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_ITEM_HEAD = Struct("<HHL")
_MAX_DEPTH = 8  # deeper nesting is pydicom's to read (and to refuse, when it is hostile)
# How a walk ends: the file meta group, the top-level dataset (at the pixel data or the
# end of the file), an item of defined length (at its end), or one of undefined length
# (at its delimitation item).
_META, _TOP, _ITEM_DEFINED, _ITEM_UNDEFINED = range(4)


@dataclass(frozen=True)
class QuickRead:
    meta: Elements  # the file meta group, as read
    # The dataset's top-level elements up to the pixel data, in order, as dcmread stores
    # them; a sequence of undefined length (which pydicom reads into a Sequence) has no value.
    elements: Elements
    sequences: Sequences  # the items of the top-level sequences
    end: int  # where the walk stopped: the pixel data element's tag, or the end of the file
    implicit: bool  # Implicit VR Little Endian (else Explicit)


class _Declined(Exception):
    """Not a plain file: pydicom's path reads it."""


def quick_read(data: bytes) -> QuickRead | None:
    """The file's elements as `dcmread(stop_before_pixels=True)` reads them, or None when
    the file is anything but plain (see the module docstring)."""
    size = len(data)
    if size < 140 or data[128:132] != b"DICM":
        return None
    try:
        meta, _, pos = _walk(data, 132, _META, size, 0, False)
        if not meta or next(iter(meta)) == _TRANSFER_SYNTAX:
            return None  # pydicom converts the first meta element in place
        syntax = meta.get(_TRANSFER_SYNTAX)
        if syntax is None or not isinstance(syntax.value, bytes):
            return None
        uid = syntax.value.decode(default_encoding).rstrip("\0 ")
        if uid != _IMPLICIT_LE and uid not in _EXPLICIT_LE:
            return None
        if pos + 8 > size or data[pos : pos + 2] == b"\0\0":  # no dataset, or a command group
            return None
        implicit = uid == _IMPLICIT_LE
        if implicit and 0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B:
            return None  # looks explicit: pydicom would switch (and warn)
        elements, sequences, end = _walk(data, pos, _TOP, size, 0, implicit)
    except _Declined:
        return None
    if not elements:
        return None
    return QuickRead(meta, elements, sequences, end, implicit)


def _walk(
    data: bytes, pos: int, mode: int, limit: int, depth: int, implicit: bool
) -> tuple[Elements, Sequences, int]:
    """Little endian elements from `pos` up to `limit`; see `_META` for where each kind of
    walk ends. Returns the elements, the items of their sequences and the position after
    the last element (after the delimitation item of an item)."""
    out: Elements = {}
    sequences: Sequences = {}
    last = -1
    head, length32, plain = _HEAD.unpack_from, _LENGTH.unpack_from, _ITEM_HEAD.unpack_from
    while pos < limit:
        if pos + 8 > limit:
            raise _Declined  # an element header cut by EOF (or by the item's end)
        if implicit:
            group, elem, length = plain(data, pos)
            raw_vr = b"\0\0"
        else:
            group, elem, raw_vr, length = head(data, pos)
        tag = group << 16 | elem
        if mode == _META and group != 0x0002:
            break
        if mode == _TOP and tag in PIXEL_TAGS:
            break
        if mode == _ITEM_UNDEFINED and tag == _ITEM_END and raw_vr == b"\0\0" and not length:
            return out, sequences, pos + 8
        if tag <= last or group == 0xFFFE:
            raise _Declined
        start = pos + 8
        if implicit:
            file_vr = None  # as pydicom stores it; the dictionary's VR renders it
            vr = plain_vr(tag)
            if not vr:
                raise _Declined  # private, ambiguous or unknown: pydicom decides its VR
        else:
            file_vr = vr = _VRS.get(raw_vr, "")
            if not vr:
                raise _Declined
            if vr in _LONG:
                if pos + 12 > limit:
                    raise _Declined
                (length,) = length32(data, pos + 8)
                start = pos + 12
        if length > _DEFER_SIZE and length != _UNDEFINED and (mode != _TOP or tag != _CHARSET):
            raise _Declined  # pydicom defers a long top-level value: its path reads those
        if vr == "SQ" and mode != _META and depth < _MAX_DEPTH:
            items, end = _sequence(data, start, length, limit, depth + 1, implicit)
            sequences[tag] = items
            value = None if length == _UNDEFINED else data[start:end]
            out[tag] = RawDataElement(BaseTag(tag), file_vr, length, value, start, implicit, True)
            last, pos = tag, end
            continue
        end = start + length
        if length == _UNDEFINED or end > limit or vr == "SQ":
            raise _Declined
        if tag == _CHARSET and mode != _TOP:
            raise _Declined  # an item's own character set: pydicom's path
        value = data[start:end] if length else None if implicit else _EMPTY[vr]
        out[tag] = RawDataElement(BaseTag(tag), file_vr, length, value, start, implicit, True)
        last, pos = tag, end
    if mode == _ITEM_UNDEFINED:
        raise _Declined  # no delimitation item before the end
    return out, sequences, pos


def _sequence(
    data: bytes, pos: int, length: int, limit: int, depth: int, implicit: bool
) -> tuple[Items, int]:
    """The items of a sequence whose value starts at `pos`, and the position after it."""
    items: Items = []
    end = limit if length == _UNDEFINED else pos + length
    if end > limit:
        raise _Declined
    while True:
        if length != _UNDEFINED and pos == end:
            return items, pos
        if pos + 8 > end:
            raise _Declined
        group, elem, item_length = _ITEM_HEAD.unpack_from(data, pos)
        tag = group << 16 | elem
        if tag == _SEQUENCE_END and length == _UNDEFINED and not item_length:
            return items, pos + 8
        if tag != _ITEM:
            raise _Declined
        pos += 8
        if item_length == _UNDEFINED:
            elements, sequences, pos = _walk(data, pos, _ITEM_UNDEFINED, end, depth, implicit)
        else:
            item_end = pos + item_length
            if item_end > end:
                raise _Declined
            elements, sequences, pos = _walk(data, pos, _ITEM_DEFINED, item_end, depth, implicit)
            if pos != item_end:
                raise _Declined
        items.append((elements, sequences))


def plain_vr(tag: int) -> str:
    """The dictionary's VR of a public tag read with implicit VR; "" when it is ambiguous
    (US or SS...), private or unknown: pydicom decides those."""
    if tag & 0x10000:
        return ""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return ""
    return "" if " or " in vr else vr
