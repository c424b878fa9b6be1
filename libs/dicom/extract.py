"""Read one file's DICOM header and hash it, safely, without decoding pixels.

`extract_file` is synchronous and pure (it reads only the file it is given) so it
can run in an isolated worker process (see `libs/runtime/sandbox.py`). It is written for
hostile input: every way pydicom can fail becomes a `NotDicomError` or a
`DicomParseError` whose message says what is wrong, in words.

A file up to `_WHOLE_READ` bytes is read whole, once. A plain one (`libs.dicom.quickread`:
nearly every file) is parsed from those bytes without pydicom, giving what pydicom's path
would; both hashes are taken from the same bytes. Any other file takes pydicom's path,
which judges it (the quick reader only declines, never refuses).

How the two hashes are made (the contract is in `libs.contracts.events.Hashes`):
- The header is parsed (quickly, or by `dcmread(stop_before_pixels=True)`, which leaves
  the file positioned there) up to the Pixel Data element's tag. That position is
  verified (the tag is read back), then the element header is decoded here, honouring
  the encoding the parse used (explicit/implicit VR, little/big endian).
- One pass over the file (the bytes read, or a stream in 1 MiB chunks) feeds
  `file_sha256` with every byte and `content_sha256` with the bytes inside the
  "content ranges": the Pixel Data value as stored (native), or each fragment's value
  (encapsulated: the items up to the sequence delimiter, the Basic Offset Table item
  included), or, with no pixel data, the dataset after the file meta group to EOF.
- Deflated Explicit VR Little Endian compresses the whole dataset, so no element
  has a file offset: its content hash covers the deflated bytes after the file meta.
"""

from __future__ import annotations

import errno
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from io import BufferedReader, BytesIO
from struct import unpack
from typing import BinaryIO

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from libs.contracts.errors import DicomParseError, NotDicomError, PermanentError, SourceGone
from libs.contracts.events import DicomHeader, Hashes
from libs.dicom.content import (
    PIXEL_TAGS,
    UNDEFINED,
    Ranges,
    hash_bytes,
    hash_file,
    meta_end,
    pixel_ranges,
)
from libs.dicom.dicomjson import elements_json, header_json
from libs.dicom.header import build_header, header_from_elements
from libs.dicom.preamble import PREAMBLE, preamble_problem
from libs.dicom.quickread import quick_read
from libs.dicom.source_file import RootGroups, open_source
from libs.storage.stamp import is_own, source_stamp

DEFLATED = "1.2.840.10008.1.2.1.99"
# Elements this large are not read into memory while parsing the header (pydicom
# skips them); nothing `build_header` reads is legitimately that long.
_DEFER_SIZE = 1 << 20
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR})
# Files up to this size are read whole, once, for the header and both hashes; larger ones
# (multi-frame) are parsed from the file and hashed in a streaming pass.
_WHOLE_READ = 64 << 20
_CHARSET = 0x00080005


@dataclass(frozen=True)
class _Layout:
    """Where the content bytes are: sorted, disjoint [start, end) file offsets."""

    ranges: Ranges
    has_pixels: bool
    pixel: tuple[int, str] | None = None  # (tag, VR) of the pixel data element, when present


class _TrackedReader:
    """The file as pydicom sees it, noticing an element header cut short by EOF.

    pydicom stops silently when fewer than 8 bytes are left for an element header,
    so a file cut inside a header would otherwise look complete. Header reads are
    the small ones (tag, VR, length: at most 12 bytes); a short value read is
    caught by `_check_elements`, and chunked delimiter scans may legitimately
    come back short at EOF.
    """

    __slots__ = ("_read", "cut_header", "seek", "tell")

    def __init__(self, f: BinaryIO) -> None:
        self._read = f.read
        self.seek = f.seek
        self.tell = f.tell
        self.cut_header = False

    def read(self, size: int = -1) -> bytes:
        data = self._read(size)
        if 0 < len(data) < size <= 12:
            self.cut_header = True
        return data


def extract_file(
    path: str,
    zero_hostile_preamble: bool = False,
    roots: RootGroups | None = None,
    *,
    own: bool = False,
) -> tuple[DicomHeader, Hashes]:
    """Header and hashes of the DICOM file at `path` (`own`: a file our own source closed
    before announcing it, whose stamp needs no 2 s of rest: `libs.storage.stamp`).

    Raises `NotDicomError` (empty, no 'DICM' prefix), `DicomParseError` (truncated,
    malformed, missing or invalid UIDs, a preamble that is not zeros or a TIFF header) or
    `PermanentError` (file gone; with `roots`, a file leading outside them or a link: see
    `libs.dicom.source_file`). With `zero_hostile_preamble` such a preamble is accepted:
    `file_sha256` is then of the file with its preamble zeroed, as it is to be stored. A genuine
    I/O error (EIO, ESTALE, EACCES...) is re-raised as is, so the bus retries it.
    MemoryError and KeyboardInterrupt pass through; nothing else escapes.
    """
    started = time.time_ns()  # the stamp's age counts up to before the file was read
    try:
        # pydicom warns (and logs) about every oddity of a hostile file; the outcome
        # here is the verdict, so the warnings are not surfaced.
        with warnings.catch_warnings(), open_source(path, roots) as f:
            warnings.simplefilter("ignore")
            opened = os.fstat(f.fileno())
            size = opened.st_size
            if size == 0:
                raise NotDicomError("empty file")
            # One read of the whole file: the header is parsed from it and it is hashed.
            data = f.read(size) if size <= _WHOLE_READ else f.read(PREAMBLE + 4)
            problem = preamble_problem(data[: PREAMBLE + 4])
            if problem and not zero_hostile_preamble:
                raise DicomParseError(problem)
            zeroed = PREAMBLE if problem else 0
            quick = _quick(data) if len(data) == size else None
            if quick is not None:
                header, layout = quick
                file_hash, content_hash = hash_bytes(data, layout.ranges, zero_head=zeroed)
            else:  # anything but a plain file, or a large one: pydicom reads it
                f.seek(0)
                ds, layout = _parse(f, size)
                header = build_header(ds)
                header = header.model_copy(update={"dicom_json": header_json(ds, layout.pixel)})
                file_hash, content_hash = hash_file(f, size, layout.ranges, zero_head=zeroed)
            stamp = (
                None
                if problem
                else source_stamp(opened, os.fstat(f.fileno()), now_ns=started, own=own)
            )
    except (PermanentError, MemoryError):
        raise
    except RecursionError:
        raise DicomParseError("malformed: sequences nested too deeply to parse") from None
    except OSError as exc:
        if exc.errno in _GONE:
            raise SourceGone(f"source file is gone or not a regular file: {path}") from None
        if exc.errno is not None:
            raise  # a real I/O error: worth a retry
        # pydicom raises errno-less OSErrors for structural problems.
        raise DicomParseError(f"malformed or truncated: {_describe(exc)}") from None
    except Exception as exc:  # anything pydicom (or a converter) throws on bad bytes
        raise DicomParseError(f"unreadable DICOM: {_describe(exc)}") from None
    return header, Hashes(
        file_sha256=file_hash,
        content_sha256=content_hash,
        has_pixels=layout.has_pixels,
        preamble_zeroed=bool(problem),
        source_stamp=stamp,
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _parse(f: BufferedReader, size: int) -> tuple[Dataset, _Layout]:
    reader = _TrackedReader(f)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(reader, stop_before_pixels=True, defer_size=_DEFER_SIZE)
        except InvalidDicomError:
            raise NotDicomError("not a DICOM file: no DICM preamble") from None
    for w in caught:  # pydicom turns EOFError inside the dataset into a warning
        text = str(w.message)
        if "end of file" in text.lower():
            raise DicomParseError(f"truncated: {text.split(' in file ')[0]}")
    if reader.cut_header:
        raise DicomParseError(f"truncated: the file ends inside an element header at offset {size}")
    pos = f.tell()  # where pydicom stopped: at the pixel data tag, or at EOF
    if not len(ds):
        if size <= 132:
            raise DicomParseError("no dataset: the file ends right after the DICM prefix")
        raise DicomParseError(
            f"no dataset: no data element could be read after the file meta, which is "
            f"probably malformed ({size - 132} bytes follow the DICM prefix)"
        )
    syntax = _transfer_syntax(ds)
    # Deflate: pydicom parsed an inflated copy, so offsets are not file offsets.
    implicit, little = _check_elements(ds, None if syntax == DEFLATED else size, syntax)
    if syntax == DEFLATED:
        return ds, _Layout([(meta_end(f, size), size)], has_pixels=_deflated_has_pixels(ds))
    return ds, _layout(f, size, pos, implicit=implicit, little=little)


def _layout(f: BinaryIO, size: int, pos: int, *, implicit: bool, little: bool) -> _Layout:
    """The content ranges of a file whose dataset was read up to `pos`: the pixel data's
    tag there, or the end of the file."""
    dataset = [(meta_end(f, size), size)]
    if pos >= size:
        return _Layout(dataset, has_pixels=False)
    ranges = pixel_ranges(f, pos, size, implicit=implicit, little=little)
    if not ranges:  # zero-length Pixel Data: nothing to identify the image by
        return _Layout(dataset, has_pixels=False)
    return _Layout(ranges, has_pixels=True, pixel=_pixel_element(f, pos, implicit, little))


def _quick(data: bytes) -> tuple[DicomHeader, _Layout] | None:
    """Header and layout of a plain file read whole (`libs.dicom.quickread`), the same as
    pydicom's path gives; None for any other file, which that path then reads and judges."""
    read = quick_read(data)
    if read is None:
        return None
    elements: dict[int, DataElement | RawDataElement] = dict(read.elements)
    charset: str | list[str] = default_encoding
    try:
        raw = read.elements.get(_CHARSET)
        if raw is not None:  # converted while reading, as `dcmread` does
            converted = convert_raw_data_element(raw, encoding=default_encoding)
            elements[_CHARSET] = converted
            charset = convert_encodings(converted.value)
        layout = _layout(BytesIO(data), len(data), read.end, implicit=read.implicit, little=True)
        text = elements_json(elements, charset, layout.pixel, read.sequences)
        header = header_from_elements(elements, read.meta, text)
    except (MemoryError, RecursionError):
        raise
    except Exception:  # a bad UID, a malformed pixel data element, an unusual value...
        return None
    return header, layout


_PIXEL_VRS = frozenset({b"OB", b"OW", b"OF", b"OD"})
_IMPLICIT_PIXEL_VR = {0x7FE00008: "OF", 0x7FE00009: "OD", 0x7FE00010: "OW"}


def _pixel_element(f: BinaryIO, pos: int, implicit: bool, little: bool) -> tuple[int, str]:
    """(tag, VR) of the pixel data element at `pos` (`pixel_ranges` checked its header)."""
    f.seek(pos)
    head = f.read(6)
    group, elem = unpack(("<" if little else ">") + "HH", head[:4])
    tag = group << 16 | elem
    vr = head[4:6]
    if not implicit and vr in _PIXEL_VRS:
        return tag, vr.decode()
    return tag, _IMPLICIT_PIXEL_VR.get(tag, "OW")


def _check_elements(ds: Dataset, size: int | None, syntax: str) -> tuple[bool, bool]:
    """Fail on values cut short by EOF; return the encoding pydicom read the body with.

    pydicom reads a value with one `read(length)` and does not check the result, so a
    shortened value is the only trace of a file cut inside it. The encoding is taken
    from the raw elements because pydicom may have switched to implicit VR when the
    body did not match the declared transfer syntax.
    """
    implicit: bool | None = None
    little = True
    for elem in _raw_elements(ds):
        if elem.length == UNDEFINED:
            continue
        got = None if elem.value is None else len(elem.value)
        if (got is not None and got < elem.length) or (
            got is None and elem.length and size and elem.value_tell + elem.length > size
        ):
            raise DicomParseError(
                f"truncated: element {elem.tag} declares {elem.length} bytes at offset "
                f"{elem.value_tell} but the file ends at {size}"
            )
        implicit, little = elem.is_implicit_VR, elem.is_little_endian
    if implicit is None:
        implicit = syntax == "1.2.840.10008.1.2"
        little = syntax != "1.2.840.10008.1.2.2"
    return implicit, little


def _raw_elements(ds: Dataset) -> Iterator[RawDataElement]:
    """Top-level elements as read; `values()`, unlike `elements()`, never reads deferred ones."""
    for elem in ds.values():
        if isinstance(elem, RawDataElement):
            yield elem


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    elem = meta.get_item(0x00020010, keep_deferred=True) if meta is not None else None
    value = elem.value if elem is not None else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip("\0 ") if value is not None else ""


def _deflated_has_pixels(ds: Dataset) -> bool:
    """For deflate, pydicom parsed an inflated in-memory copy: look at where it stopped."""
    buf = getattr(ds, "buffer", None)
    head = buf.read(4) if buf is not None else b""
    if len(head) < 4:
        return False
    group, elem = unpack("<HH", head)
    return (group << 16 | elem) in PIXEL_TAGS


def extract_many(
    paths: list[str],
    zero_hostile_preamble: bool = False,
    roots: RootGroups | None = None,
    own_roots: tuple[str, ...] = (),
) -> list[tuple[DicomHeader, Hashes] | Exception]:
    """`extract_file` for several files in one call (one round trip to a parser process):
    per file its result, or the `PermanentError` or I/O error it failed with. Anything else
    (MemoryError) fails the call, and the caller tries the files one by one. A file inside
    one of `own_roots` (`libs.storage.stamp.own_roots`) is one of our own staged files."""
    out: list[tuple[DicomHeader, Hashes] | Exception] = []
    for path in paths:
        try:
            out.append(
                extract_file(path, zero_hostile_preamble, roots, own=is_own(path, own_roots))
            )
        except (PermanentError, OSError) as exc:
            out.append(exc)
    return out
