"""Where a DICOM file's content bytes are, and the one streaming pass that hashes them.

`extract.py` parses the header with pydicom, which stops at the Pixel Data tag;
from there this module decodes the element header itself and lists the byte
ranges that identify the image ("content ranges"), so the pixels are hashed as
stored, never decoded and never held in memory:
- native Pixel Data: its value, `length` bytes;
- encapsulated (undefined length): each item's value, the Basic Offset Table
  included, walked up to the sequence delimiter (FFFE,E0DD);
- no pixel data: the dataset after the file meta group, to EOF.
Every declared length is checked against the file size: a length past EOF is a
truncated file, whatever the header claims.
"""

from __future__ import annotations

import hashlib
from io import BufferedReader
from struct import unpack
from typing import BinaryIO

from libs.contracts.errors import DicomParseError

CHUNK = 1 << 20
UNDEFINED = 0xFFFFFFFF
# Pixel Data, Float Pixel Data, Double Float Pixel Data: where pydicom stops.
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
_ITEM, _SEQ_DELIM = 0xFFFEE000, 0xFFFEE0DD
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 §7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)

Ranges = list[tuple[int, int]]


def meta_end(f: BinaryIO, size: int) -> int:
    """Offset of the first byte after the file meta group (0002,xxxx).

    Walks the group as Part 10 encodes it (explicit VR little endian, from offset
    132) rather than trusting (0002,0000) Group Length, which hostile files get wrong.
    """
    pos = 132
    while pos + 8 <= size:
        f.seek(pos)
        head = f.read(12)
        if unpack("<H", head[:2])[0] != 0x0002:
            break
        if head[4:6] in _LONG_VRS:
            if len(head) < 12:
                break
            pos += 12 + unpack("<L", head[8:12])[0]
        else:
            pos += 8 + unpack("<H", head[6:8])[0]
    return min(pos, size)


def pixel_ranges(f: BinaryIO, pos: int, size: int, *, implicit: bool, little: bool) -> Ranges:
    """Content ranges of the pixel data element whose tag starts at `pos`."""
    e = "<" if little else ">"
    f.seek(pos)
    head = f.read(12)
    if len(head) < 8:
        raise DicomParseError(f"truncated: incomplete element header at offset {pos}")
    group, elem = unpack(e + "HH", head[:4])
    tag = group << 16 | elem
    if tag not in PIXEL_TAGS:
        # pydicom stops early at a stray Item Delimitation Item; the rest is unread.
        raise DicomParseError(
            f"malformed: the dataset ends at offset {pos} with ({group:04X},{elem:04X}) "
            f"but the file has {size - pos} more bytes"
        )
    vr = head[4:6]
    if not implicit and vr in _LONG_VRS:
        if len(head) < 12:
            raise DicomParseError(f"truncated: incomplete Pixel Data header at offset {pos}")
        length, start = unpack(e + "L", head[8:12])[0], pos + 12
    elif not implicit and b"AA" <= vr <= b"ZZ":  # odd VR with a 2-byte length, as pydicom
        length, start = unpack(e + "H", head[6:8])[0], pos + 8
    else:
        length, start = unpack(e + "L", head[4:8])[0], pos + 8
    if length == UNDEFINED:
        return _fragment_ranges(f, start, size, e)
    if start + length > size:
        raise DicomParseError(
            f"truncated: Pixel Data declares {length} bytes at offset {start} but only "
            f"{size - start} remain"
        )
    return [(start, start + length)] if length else []


def _fragment_ranges(f: BinaryIO, pos: int, size: int, e: str) -> Ranges:
    """Walk encapsulated Pixel Data items (FFFE,E000) up to the delimiter (FFFE,E0DD)."""
    ranges: Ranges = []
    while True:
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8:
            raise DicomParseError(
                f"truncated: encapsulated Pixel Data has no sequence delimiter "
                f"({len(ranges)} items read, file ends at {size})"
            )
        group, elem, length = unpack(e + "HHL", head)
        tag = group << 16 | elem
        if tag == _SEQ_DELIM:
            return ranges
        if tag != _ITEM:
            raise DicomParseError(
                f"malformed encapsulated Pixel Data: expected an item at offset {pos}, "
                f"found ({group:04X},{elem:04X})"
            )
        start = pos + 8
        if length == UNDEFINED or start + length > size:
            raise DicomParseError(
                f"truncated: Pixel Data item at offset {pos} declares {length} bytes but "
                f"only {size - start} remain"
            )
        if length:
            ranges.append((start, start + length))
        pos = start + length


def hash_file(
    f: BufferedReader, size: int, ranges: Ranges, *, zero_head: int = 0
) -> tuple[str, str]:
    """One streaming pass: every byte into the file hash, `ranges` into the content hash.
    The first `zero_head` bytes are hashed as zeros (a preamble to be stored zeroed)."""
    whole, content = hashlib.sha256(), hashlib.sha256()
    buf = bytearray(min(CHUNK, size))
    view = memoryview(buf)
    f.seek(0)
    pos, i = 0, 0
    while pos < size:
        n = f.readinto(buf)
        if not n:
            raise DicomParseError(f"truncated: the file shrank to {pos} bytes while being read")
        n = min(n, size - pos)
        chunk = view[:n]
        if pos < zero_head:
            cut = min(n, zero_head - pos)
            buf[:cut] = bytes(cut)
        whole.update(chunk)
        end = pos + n
        while i < len(ranges):
            a, b = ranges[i]
            if a >= end:
                break
            lo, hi = max(a, pos), min(b, end)
            if lo < hi:
                content.update(chunk[lo - pos : hi - pos])
            if b > end:
                break
            i += 1
        pos = end
    return whole.hexdigest(), content.hexdigest()


def hash_bytes(data: bytes, ranges: Ranges, *, zero_head: int = 0) -> tuple[str, str]:
    """`hash_file` of a file already read whole into `data`."""
    view = memoryview(data)
    whole, content = hashlib.sha256(), hashlib.sha256()
    if zero_head:
        whole.update(bytes(min(zero_head, len(data))))
    whole.update(view[zero_head:])
    for a, b in ranges:
        content.update(view[a:b])
    return whole.hexdigest(), content.hexdigest()
