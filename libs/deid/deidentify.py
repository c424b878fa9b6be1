"""De-identify one dataset per PS3.15 Table E.1-1 (see `libs.deid.profile`).

Everything that must stay consistent across instances and exports is derived from the
installation's secret with HMAC-SHA-256, never stored per export:

- a UID becomes `2.25.<128 bits of HMAC(uid)>`: the same study, series, frame of reference
  or referenced instance gets the same new UID in every instance that names it, so
  references inside sequences (ReferencedSOPInstanceUID...) still point at the right object;
- a patient becomes `ANON<10 hex digits of HMAC(PatientID)>` (PatientName and PatientID);
- with `modified_dates`, every date is moved back by a whole number of days (365 to 3,650)
  derived from HMAC(PatientID): the same for every study of a patient, so intervals between
  a patient's studies are kept exactly, and different (by chance, 1 in 3,286 alike) between
  patients. Times of day are kept (a whole-day shift leaves them as they were).

Without the secret none of these can be reversed or recomputed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import date, timedelta

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from libs.deid.profile import SUPPORTED_OPTIONS, Profile, table

UID_ROOT = "2.25."
MIN_SHIFT_DAYS, MAX_SHIFT_DAYS = 365, 3650
PSEUDONYM_PREFIX = "ANON"
DUMMY_TEXT = "ANONYMIZED"
CLEANED = "*"
# VR -> the dummy (D) value; text VRs not listed get DUMMY_TEXT cut to the VR's length.
_DUMMY: dict[str, object] = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "PN": "ANONYMIZED",
    "CS": "ANONYMIZED",
    "AE": "ANONYMIZED",
    "DS": "0",
    "IS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "AT": 0,
}
_SHORT = {"SH": 16, "CS": 16, "AE": 16, "LO": 64, "PN": 64}
_BINARY = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}
# Codes of PS3.16 CID 7050 (De-identification Method), DCM scheme.
_METHOD_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
}
# Values replaced by a dummy inside a sequence whose action is D (Content Sequence, Person
# Identification Code Sequence...), when the table does not list them: the free text of a
# structured report, the code of a person or institution.
_DUMMY_INSIDE = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC", "DA", "DT"})
_IDENTIFYING = ("PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate")
_MANY = (MultiValue, list, tuple)  # a multi-valued element (pydicom reads them as MultiValue)
_IDENTIFYING_TAGS = frozenset(tag_for_keyword(k) for k in _IDENTIFYING)
_WORD = re.compile(r"[^\W_]{2,}", re.UNICODE)


@dataclass(frozen=True)
class Options:
    """The profile's options asked for (PS3.15 E.3)."""

    modified_dates: bool = False
    clean_descriptors: bool = False

    @property
    def names(self) -> frozenset[str]:
        return frozenset(o for o in SUPPORTED_OPTIONS if getattr(self, o))


@dataclass(frozen=True)
class Keys:
    """What is derived from the installation's secret."""

    secret: bytes

    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.new(self.secret, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, uid: str) -> str:
        return UID_ROOT + str(int.from_bytes(self._mac("uid", uid.strip())[:16], "big"))

    def pseudonym(self, patient_id: str) -> str:
        return PSEUDONYM_PREFIX + self._mac("patient", patient_id).hex()[:10].upper()

    def shift_days(self, patient_id: str) -> int:
        span = MAX_SHIFT_DAYS - MIN_SHIFT_DAYS + 1
        return -(MIN_SHIFT_DAYS + int.from_bytes(self._mac("dates", patient_id)[:8]) % span)


def shift_date(value: str, days: int) -> str:
    """`YYYYMMDD` moved by `days`; a partial date (YYYY, YYYYMM) keeps its precision."""
    digits = value.strip()
    if not digits.isdigit() or len(digits) not in (4, 6, 8):
        return _DUMMY["DA"]  # type: ignore[return-value]  # a string
    padded = digits + "0101"[len(digits) - 4 :] if len(digits) < 8 else digits
    try:
        moved = date(int(padded[:4]), int(padded[4:6]), int(padded[6:8])) + timedelta(days)
    except ValueError:
        return _DUMMY["DA"]  # type: ignore[return-value]
    return moved.strftime("%Y%m%d")[: len(digits)]


def _shift(value: str, vr: str, days: int) -> str:
    if vr == "DA":
        return "-".join(shift_date(part, days) if part else "" for part in value.split("-"))
    if vr == "DT":
        head = value[:8]
        return shift_date(head, days) + value[len(head) :] if head else value
    return value  # TM: a whole-day shift keeps the time of day


class _Run:
    """The de-identification of one dataset (its identifying words, the patient's keys)."""

    def __init__(self, ds: Dataset, options: Options, keys: Keys, profile: Profile) -> None:
        self.options = options.names
        self.keys = keys
        self.profile = profile
        self.patient_id = str(ds.get("PatientID", "") or "")
        self.days = keys.shift_days(self.patient_id)
        self.words = _identifying_words(ds) if options.clean_descriptors else frozenset()

    def dataset(self, ds: Dataset, inside_dummy: bool = False) -> None:
        """Elements are looked at by tag and VR before their values are decoded: the ones
        the profile keeps as they are (Pixel Data above all) are never read or converted."""
        for tag in list(ds.keys()):
            if tag.is_private or tag.group == 0x0000:  # private; command elements
                del ds[tag]
                continue
            action = self.profile.action(tag, self.options)
            vr = _vr(ds, tag)
            if vr == "SQ" or action not in (None, "K") or (inside_dummy and vr in _DUMMY_INSIDE):
                self.element(ds, ds[tag], action, inside_dummy)

    def element(
        self, ds: Dataset, elem: DataElement, action: str | None, inside_dummy: bool
    ) -> None:
        tag = BaseTag(elem.tag)
        if elem.VR == "SQ":
            self.sequence(ds, elem, action, inside_dummy)
            return
        if action is None and inside_dummy and elem.VR in _DUMMY_INSIDE and elem.value:
            action = "D"
        if action is None or action == "K":
            return
        if action == "X":
            del ds[tag]
        elif action == "Z":
            elem.value = self.pseudonym(tag) or (b"" if elem.VR in _BINARY else None)
        elif action == "U" or elem.VR == "UI":
            elem.value = self.uids(elem.value)
        elif action == "D":
            elem.value = self.pseudonym(tag) or dummy(elem)
        elif action == "C":
            elem.value = self.clean(elem)

    def sequence(
        self, ds: Dataset, elem: DataElement, action: str | None, inside_dummy: bool
    ) -> None:
        if action == "X":
            del ds[elem.tag]
        elif action == "Z":
            elem.value = Sequence()
        else:  # kept, dummy, cleaned or U*: the items stay, de-identified by the same rules;
            # in a dummy (D) sequence, text and dates the table does not list become dummies
            for item in elem.value:
                self.dataset(item, inside_dummy or action == "D")

    def pseudonym(self, tag: BaseTag) -> str | None:
        """PatientName and PatientID get the patient's pseudonym (a dummy value PS3.15
        allows for Z), so one patient's studies stay together in the export."""
        if tag in (0x00100010, 0x00100020):
            return self.keys.pseudonym(self.patient_id)
        return None

    def uids(self, value: object) -> object:
        if isinstance(value, _MANY):
            return [self.keys.uid(str(v)) for v in value]
        return self.keys.uid(str(value)) if value else value

    def clean(self, elem: DataElement) -> object:
        if elem.VR in ("DA", "DT", "TM"):
            if isinstance(elem.value, _MANY):
                return [_shift(str(v), elem.VR, self.days) for v in elem.value]
            return _shift(str(elem.value or ""), elem.VR, self.days) if elem.value else elem.value
        if isinstance(elem.value, str):
            return self.clean_text(elem.value)
        if isinstance(elem.value, _MANY):
            return [self.clean_text(str(v)) for v in elem.value]
        return dummy(elem)

    def clean_text(self, text: str) -> str:
        """A descriptor with every word of the patient's identity (names, IDs, accession
        number, birth date, other people's names in the object) replaced by `*`."""
        return _WORD.sub(lambda m: CLEANED if m.group(0).casefold() in self.words else m[0], text)


def _identifying_words(ds: Dataset) -> frozenset[str]:
    words: set[str] = set()

    def collect(item: Dataset) -> None:
        for tag in item.keys():  # noqa: SIM118  # iterating a Dataset decodes every element
            vr = _vr(item, tag)
            if vr == "SQ":
                for sub in item[tag].value or ():
                    collect(sub)
            elif vr == "PN" or tag in _IDENTIFYING_TAGS:
                value = item[tag].value
                values = value if isinstance(value, _MANY) else [value]
                for v in values:
                    words.update(w.casefold() for w in _WORD.findall(str(v or "")))

    collect(ds)
    return frozenset(words)


def _vr(ds: Dataset, tag: BaseTag) -> str:
    """The element's VR without decoding its value (the dictionary's for implicit VR)."""
    vr = ds.get_item(tag).VR
    if vr:
        return str(vr)
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


def dummy(elem: DataElement) -> object:
    """A non-empty value of the element's VR that says nothing about anyone."""
    vr = elem.VR
    if vr in _BINARY:
        length = len(elem.value or b"") or 2
        return b"\0" * (length + length % 2)
    if vr in _DUMMY:
        return _DUMMY[vr]
    return DUMMY_TEXT[: _SHORT.get(vr, 64)]


def deidentify(ds: Dataset, options: Options, keys: Keys) -> Dataset:
    """`ds` de-identified in place (and returned), with the attributes that say how."""
    run = _Run(ds, options, keys, table())
    run.dataset(ds)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "dicomflow PS3.15 E.1-1 " + "+".join(
        ["basic", *sorted(options.names)]
    )
    codes = Sequence()
    for name in ["basic", *sorted(options.names)]:
        code = Dataset()
        code.CodeValue, code.CodeMeaning = _METHOD_CODES[name]
        code.CodingSchemeDesignator = "DCM"
        codes.append(code)
    ds.DeidentificationMethodCodeSequence = codes
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if options.modified_dates else "REMOVED"
    if getattr(ds, "file_meta", None) is not None:
        _file_meta(ds.file_meta, ds)
    return ds


def _file_meta(meta: FileMetaDataset, ds: Dataset) -> None:
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in (
        "SourceApplicationEntityTitle",
        "SendingApplicationEntityTitle",
        "ReceivingApplicationEntityTitle",
        "PrivateInformationCreatorUID",
        "PrivateInformation",
    ):
        if keyword in meta:
            delattr(meta, keyword)
