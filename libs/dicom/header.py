"""Turn a parsed (possibly hostile) dataset into the `DicomHeader` contract.

Only the three UIDs are required; they must be valid or the file is rejected,
because they become storage paths and primary keys. Every other attribute is
best effort: a value that cannot be read or decoded becomes "" (text) or None
(numbers), never an error, so one odd attribute does not lose an image.

Values are decoded straight from the raw element bytes with the VR the standard
gives the attribute (not the VR a hostile file declares), using pydicom's own
decoders (`convert_PN`, `convert_text`) with the file's Specific Character Set,
ISO 2022 escape sequences included. That is what `ds.PatientName` would do, at a
fraction of the cost (no DataElement is built). An unknown or wrong character set
falls back to pydicom's default, with replacement characters, rather than failing.

Values are then made safe to carry and store: NUL and unencodable characters
removed, at most `MAX_TEXT_LENGTH` characters (the longest valid value of these
attributes, a three-group PN, is under 800), so an event stays far below Kafka's
message size limit whatever the file holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.values import convert_PN, convert_text

from libs.contracts.errors import DicomParseError
from libs.contracts.events import DicomHeader, InstanceAttrs, PatientAttrs, SeriesAttrs, StudyAttrs
from libs.dicom.uids import require_uid

MAX_TEXT_LENGTH = 1024
_INT = re.compile(rb"[+-]?[0-9]{1,12}")
_INT_RANGE = range(-(2**31), 2**31)  # IS is a signed 32-bit integer (PS3.5 §6.2)
# A dataset's elements by tag as read: raw, or converted where pydicom converted them.
Elements = Mapping[int, DataElement | RawDataElement]


def build_header(ds: Dataset) -> DicomHeader:
    """The header contract for `ds`; DicomParseError when a required UID is bad."""
    # `items()` gives the stored elements as read: no conversion, no deferred read.
    meta = getattr(ds, "file_meta", None)
    return header_from_elements(
        {int(tag): elem for tag, elem in ds.items()},
        {int(tag): elem for tag, elem in meta.items()} if meta is not None else {},
    )


def header_from_elements(
    elements: Elements, meta_elements: Elements, dicom_json: str | None = None
) -> DicomHeader:
    """`build_header` of the dataset whose top-level elements (as read, by tag) are
    `elements` and whose file meta group is `meta_elements`, with its DICOM JSON."""
    r = _Reader(elements)
    meta = _Reader(meta_elements)
    return DicomHeader(
        patient=PatientAttrs(
            patient_id=r.text(0x00100020),
            issuer_of_patient_id=r.text(0x00100021),
            patient_name=r.name(0x00100010),
            birth_date=r.ascii(0x00100030),
            sex=r.ascii(0x00100040),
        ),
        study=StudyAttrs(
            study_uid=r.uid(0x0020000D, "StudyInstanceUID"),
            study_date=r.ascii(0x00080020),
            study_time=r.ascii(0x00080030),
            accession_number=r.text(0x00080050),
            study_description=r.text(0x00081030),
            study_id=r.text(0x00200010),
            referring_physician=r.name(0x00080090),
        ),
        series=SeriesAttrs(
            series_uid=r.uid(0x0020000E, "SeriesInstanceUID"),
            modality=r.ascii(0x00080060),
            series_number=r.integer(0x00200011),
            series_description=r.text(0x0008103E),
            body_part=r.ascii(0x00180015),
        ),
        instance=InstanceAttrs(
            sop_instance_uid=r.uid(0x00080018, "SOPInstanceUID"),
            sop_class_uid=r.ascii(0x00080016),
            instance_number=r.integer(0x00200013),
            transfer_syntax_uid=meta.ascii(0x00020010),
            specific_character_set=r.charset,
            rows=r.ushort(0x00280010),
            columns=r.ushort(0x00280011),
            number_of_frames=r.integer(0x00280008),
        ),
        dicom_json=dicom_json,
    )


def _clean(text: str) -> str:
    text = text.replace("\0", "").strip()
    if not text.isascii():
        # Lone surrogates cannot be stored in PostgreSQL or encoded as UTF-8 JSON.
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:MAX_TEXT_LENGTH]


def _joined(value: object) -> str:
    """A decoded value as DICOM writes it: several values separated by backslashes."""
    if type(value) is str:  # the usual single value; `isinstance(MultiValue)` is costly
        return value
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value)


# Decoded texts and names are remembered: a series' instances repeat most of them.
_REMEMBERED = 256  # bytes; longer values are decoded each time


@lru_cache(maxsize=2048)
def _text_of(raw: bytes, codecs: tuple[str, ...]) -> str:
    return _clean(_joined(convert_text(raw, list(codecs))))


@lru_cache(maxsize=2048)
def _name_of(raw: bytes, codecs: tuple[str, ...]) -> str:
    return _clean(_joined(convert_PN(raw, list(codecs))))


@lru_cache(maxsize=64)
def _codecs_of(terms: tuple[str, ...]) -> tuple[str, ...]:
    """Python codecs of Specific Character Set's defined terms (pydicom's mapping)."""
    return tuple(convert_encodings(list(terms)))


class _Reader:
    """Reads optional values from the raw elements of one dataset."""

    def __init__(self, elements: Elements) -> None:
        self._elems = elements
        values = self.ascii(0x00080005).split("\\")
        self.charset = "\\".join(v.strip() for v in values)
        try:
            self._codecs = _codecs_of(tuple(v.strip() for v in values))
        except Exception:  # unknown or malformed: decode as pydicom's default
            self._codecs = (default_encoding,)
        self._encodings = list(self._codecs)

    def _raw(self, tag: int) -> bytes | None:
        """The value bytes of `tag`; None if absent, already converted, or deferred."""
        elem = self._elems.get(tag)
        if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
            return elem.value
        return None

    def _decoded(
        self,
        tag: int,
        decode: Callable[[bytes], object],
        remembered: Callable[[bytes, tuple[str, ...]], str] | None = None,
    ) -> str:
        elem = self._elems.get(tag)
        if elem is None:
            return ""
        try:
            if isinstance(elem, RawDataElement):
                value = elem.value
                if not isinstance(value, bytes) or not value:
                    return ""  # empty, or deferred: far longer than any valid value
                if remembered is not None and len(value) <= _REMEMBERED:
                    return remembered(value, self._codecs)
                return _clean(_joined(decode(value)))
            # Already converted by pydicom (it reads Specific Character Set itself).
            if elem.VR == "SQ" or elem.value is None:
                return ""
            return _clean(_joined(elem.value))
        except MemoryError:
            raise
        except Exception:  # a malformed optional value is just missing
            return ""

    def ascii(self, tag: int) -> str:
        """CS, DA, TM, UI: the standard restricts these to ASCII."""
        return self._decoded(tag, lambda raw: raw.decode("latin-1"))

    def text(self, tag: int) -> str:
        """SH, LO: decoded with the Specific Character Set."""
        return self._decoded(tag, lambda raw: convert_text(raw, self._encodings), _text_of)

    def name(self, tag: int) -> str:
        """PN: all groups (alphabetic=ideographic=phonetic), decoded."""
        return self._decoded(tag, lambda raw: convert_PN(raw, self._encodings), _name_of)

    def uid(self, tag: int, keyword: str) -> str:
        elem = self._elems.get(tag)
        if isinstance(elem, RawDataElement) and elem.value is None and elem.length:
            raise DicomParseError(f"invalid {keyword}: the value is unreadable or far too long")
        value = self.ascii(tag).strip()
        if "\\" in value:
            raise DicomParseError(f"invalid {keyword}: several values where one UID is required")
        return require_uid(value, keyword, error=DicomParseError)

    def integer(self, tag: int) -> int | None:
        """IS as int; None when absent, multi-valued, not an integer or out of range."""
        raw = self._raw(tag)
        text = raw.strip(b" \0") if raw else b""
        if not _INT.fullmatch(text):
            return None
        number = int(text)
        return number if number in _INT_RANGE else None

    def ushort(self, tag: int) -> int | None:
        """US: exactly two bytes, in the byte order the element was read with."""
        elem = self._elems.get(tag)
        if not isinstance(elem, RawDataElement):
            return None
        if not isinstance(elem.value, bytes) or len(elem.value) != 2:
            return None
        return int.from_bytes(elem.value, "little" if elem.is_little_endian else "big")
