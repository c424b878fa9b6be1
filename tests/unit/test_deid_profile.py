"""De-identification against PS3.15 Table E.1-1 itself: a dataset holding every attribute the
table lists (that the data dictionary knows) goes through the profile, and none of them may
keep its value; the options shift dates by the patient's offset and clean descriptors; UIDs
are replaced the same way wherever they appear (references in sequences included)."""

from __future__ import annotations

from datetime import date

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from libs.deid.burned_in import burned_in_risk
from libs.deid.deidentify import Keys, Options, deidentify, shift_date
from libs.deid.profile import Rule, table
from libs.dicom.synthetic import make_dataset

KEYS = Keys(b"test-secret-of-this-installation")
PATIENT = "Doe^Jane"
PATIENT_ID = "PID-778899"
TEXT = "Doe 778899 lung"  # fits every text VR (SH: 16)


def _value(vr: str, n: int) -> object:
    """A value of `vr` that no dummy, empty or pseudonym value equals."""
    values: dict[str, object] = {
        "DA": "20240115",
        "TM": "101530",
        "DT": "20240115101530",
        "AS": "045Y",
        "PN": PATIENT,
        "CS": "SECRETCS",
        "AE": "SECRETAE",
        "DS": "12.5",
        "IS": "42",
        "US": 7,
        "SS": 7,
        "UL": 7,
        "SL": 7,
        "UV": 7,
        "SV": 7,
        "FL": 1.5,
        "FD": 1.5,
        "AT": 0x00100010,
        "UI": f"1.2.826.0.1.3680043.10.9.{n}",
    }
    if vr in values:
        return values[vr]
    if vr == "UR":
        return "http://doe.test/778899"
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return b"\x01\x02\x03\x04"
    return TEXT


def _listed() -> list[tuple[Rule, int, str]]:
    """Every attribute of the table the data dictionary knows, with its tag and VR (masked
    rows at their first group: 5000, 6000)."""
    found = []
    for rule in table().rules:
        tag = int(rule.tag.replace("x", "0"), 16)
        if tag >> 16 == 0:  # command group: never in a stored object (removed if present)
            continue
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue
        found.append((rule, tag, vr))
    return found


def _item() -> Dataset:
    item = Dataset()
    item.PatientName = PATIENT
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.10.9.999"
    return item


def _every_listed_attribute() -> Dataset:
    ds = Dataset()
    for n, (_rule, tag, vr) in enumerate(_listed()):
        value: object = Sequence([_item()]) if vr == "SQ" else _value(vr, n)
        ds.add_new(tag, vr, value)
    ds.PatientID = PATIENT_ID  # the offset and the words to clean come from it
    ds.OtherPatientIDs = PATIENT_ID
    ds.AccessionNumber = "ACC778899"
    return ds


def _kept(before: Dataset, after: Dataset, tag: int) -> bool:
    if tag not in after:
        return False
    old, new = before[tag], after[tag]
    if new.VR == "SQ":
        return len(new.value) > 0 and list(new.value) == list(old.value)
    return new.value not in (None, "", b"", []) and new.value == old.value


def test_the_table_is_the_standards() -> None:
    rules = table().rules
    assert len(rules) > 600  # 2024b lists 620 attributes (one row is "private attributes")
    assert len(_listed()) > 500
    assert {r.basic for r in rules} >= {"D", "Z", "X", "U", "X/Z", "X/D", "X/Z/D", "Z/D"}
    assert table().rule(0x00100010) and table().rule(0x00100010).basic == "Z"  # Patient's Name


def test_no_attribute_listed_keeps_its_value() -> None:
    original = _every_listed_attribute()
    result = deidentify(_every_listed_attribute(), Options(), KEYS)
    kept = [
        f"{rule.name} ({tag:08X})" for rule, tag, _ in _listed() if _kept(original, result, tag)
    ]
    assert kept == []
    assert result.PatientIdentityRemoved == "YES"
    assert result.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert result.LongitudinalTemporalInformationModified == "REMOVED"


def test_private_and_curve_and_overlay_data_are_removed() -> None:
    ds = make_dataset(
        patient_id="P1",
        patient_name=PATIENT,
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        sop_uid="1.2.3.4.5",
    )
    block = ds.private_block(0x0011, "HOSPITAL", create=True)
    block.add_new(0x01, "LO", "secret private value")
    ds.add_new(0x60003000, "OW", b"\x01\x02" * 8)
    ds.add_new(0x50020010, "US", 3)
    result = deidentify(ds, Options(), KEYS)
    assert not [e for e in result if e.tag.is_private]
    assert 0x60003000 not in result and 0x50020010 not in result
    assert "PixelData" in result  # the image itself is kept


def test_uids_are_replaced_consistently_references_included() -> None:
    study, series = "1.2.826.0.1.3680043.10.9.1", "1.2.826.0.1.3680043.10.9.1.1"
    first = make_dataset(
        patient_id="P1",
        patient_name=PATIENT,
        study_uid=study,
        series_uid=series,
        sop_uid=f"{series}.1",
    )
    second = make_dataset(
        patient_id="P1",
        patient_name=PATIENT,
        study_uid=study,
        series_uid=series,
        sop_uid=f"{series}.2",
    )
    ref = Dataset()
    ref.ReferencedSOPClassUID = first.SOPClassUID
    ref.ReferencedSOPInstanceUID = first.SOPInstanceUID
    second.ReferencedImageSequence = Sequence([ref])
    a = deidentify(first, Options(), KEYS)
    b = deidentify(second, Options(), KEYS)
    assert a.StudyInstanceUID == b.StudyInstanceUID != study
    assert a.SeriesInstanceUID == b.SeriesInstanceUID != series
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPClassUID == a.SOPClassUID  # not an identifier
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    for uid in (a.StudyInstanceUID, a.SOPInstanceUID):
        assert len(uid) <= 64 and uid.startswith("2.25.")
    other = deidentify(
        make_dataset(
            patient_id="P1",
            patient_name=PATIENT,
            study_uid=study,
            series_uid=series,
            sop_uid=f"{series}.1",
        ),
        Options(),
        Keys(b"another installation"),
    )
    assert other.StudyInstanceUID != a.StudyInstanceUID  # the secret is per installation


def _dated(patient_id: str, study_date: str, n: int) -> Dataset:
    ds = make_dataset(
        patient_id=patient_id,
        patient_name=PATIENT,
        study_uid=f"1.2.826.0.1.3680043.10.9.{n}",
        series_uid=f"1.2.826.0.1.3680043.10.9.{n}.1",
        sop_uid=f"1.2.826.0.1.3680043.10.9.{n}.1.1",
        study_date=study_date,
        birth_date="19650312",
    )
    ds.AcquisitionDateTime = f"{study_date}093000.5"
    return ds


def _days(before: str, after: str) -> int:
    return (date.fromisoformat(after[:8]) - date.fromisoformat(before[:8])).days


def test_dates_are_shifted_by_one_offset_per_patient() -> None:
    opts = Options(modified_dates=True)
    a1 = deidentify(_dated("P1", "20240115", 1), opts, KEYS)
    a2 = deidentify(_dated("P1", "20240320", 2), opts, KEYS)
    b1 = deidentify(_dated("P2", "20240115", 3), opts, KEYS)
    shift = _days("20240115", a1.StudyDate)
    assert -3650 <= shift <= -365
    assert _days("20240320", a2.StudyDate) == shift  # one patient, one offset
    assert _days("20240115", a1.SeriesDate) == shift
    assert _days("20240115093000", a1.AcquisitionDateTime) == shift
    assert a1.AcquisitionDateTime.endswith("093000.5")
    assert not a1.PatientBirthDate  # Z: the option does not list the birth date
    assert _days(a1.StudyDate, a2.StudyDate) == _days("20240115", "20240320")  # intervals kept
    assert _days("20240115", b1.StudyDate) != shift  # another patient, another offset
    assert a1.StudyTime == "101500"  # a whole-day shift keeps the time of day
    assert a1.LongitudinalTemporalInformationModified == "MODIFIED"
    # Without the option, the Basic Profile's action: no date survives.
    basic = deidentify(_dated("P1", "20240115", 1), Options(), KEYS)
    assert not basic.StudyDate
    assert basic.AcquisitionDateTime == "19000101000000"  # X/Z/D: a dummy keeps it present


def test_each_dated_attribute_of_the_table_is_shifted() -> None:
    opts = Options(modified_dates=True)
    original = _every_listed_attribute()
    result = deidentify(_every_listed_attribute(), opts, KEYS)
    shift = KEYS.shift_days(PATIENT_ID)
    checked = 0
    for rule, tag, vr in _listed():
        if rule.options.get("modified_dates") == "C" and vr in ("DA", "DT"):
            assert _days(original[tag].value, result[tag].value) == shift, rule.name
            checked += 1
    assert checked > 50


def test_clean_descriptors_keeps_descriptions_without_identity() -> None:
    opts = Options(clean_descriptors=True)
    result = deidentify(_every_listed_attribute(), opts, KEYS)
    checked = 0
    for rule, tag, vr in _listed():
        if rule.options.get("clean_descriptors") == "C" and vr in ("LO", "ST", "LT", "UT", "SH"):
            assert result[tag].value == "* * lung", rule.name  # name and ID words gone
            checked += 1
    assert checked > 40
    ds = make_dataset(
        patient_id="P1",
        patient_name="Ivanov^Ivan",
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        sop_uid="1.2.3.4.5",
        study_description="CT chest IVANOV follow-up",
    )
    assert deidentify(ds, opts, KEYS).StudyDescription == "CT chest * follow-up"


def test_patient_becomes_one_pseudonym() -> None:
    a = deidentify(_dated("P1", "20240115", 1), Options(), KEYS)
    b = deidentify(_dated("P1", "20240320", 2), Options(), KEYS)
    assert a.PatientID == b.PatientID == a.PatientName == KEYS.pseudonym("P1")
    assert deidentify(_dated("P2", "20240115", 3), Options(), KEYS).PatientID != a.PatientID


def test_free_text_and_codes_inside_dummy_sequences_are_replaced() -> None:
    ds = make_dataset(
        patient_id="P1",
        patient_name=PATIENT,
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        sop_uid="1.2.3.4.5",
    )
    text = Dataset()
    text.ValueType = "TEXT"
    text.TextValue = "Patient Jane Doe, bed 12, seen by Dr Smith"
    ds.ContentSequence = Sequence([text])
    code = Dataset()
    code.CodeValue, code.CodeMeaning, code.CodingSchemeDesignator = "EMP-4711", "Dr Smith", "L"
    person = Dataset()
    person.PersonIdentificationCodeSequence = Sequence([code])
    ds.OperatorIdentificationSequence = Sequence([person])
    result = deidentify(ds, Options(), KEYS)
    assert result.ContentSequence[0].TextValue == "ANONYMIZED"
    assert result.ContentSequence[0].ValueType == "TEXT"  # the structure stays
    item = result.OperatorIdentificationSequence[0].PersonIdentificationCodeSequence[0]
    assert (item.CodeValue, item.CodeMeaning) == ("ANONYMIZED", "ANONYMIZED")


@pytest.mark.parametrize(
    ("modality", "flag", "sop_class", "risky"),
    [
        ("CT", None, None, False),
        ("CT", "YES", None, True),
        ("US", None, None, True),
        ("US", "NO", None, False),
        ("CT", None, "1.2.840.10008.5.1.4.1.1.7", True),
    ],
)
def test_burned_in_annotation_risk(
    modality: str, flag: str | None, sop_class: str | None, risky: bool
) -> None:
    ds = Dataset()
    ds.Modality = modality
    ds.SOPClassUID = sop_class or "1.2.840.10008.5.1.4.1.1.2"
    if flag is not None:
        ds.BurnedInAnnotation = flag
    assert (burned_in_risk(ds) is not None) is risky


def test_multi_valued_uids_and_dates_read_from_a_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ds = _dated("P1", "20240115", 1)
    ds.add_new(0x00181200, "DA", ["20240110", "20240112"])  # Date of Last Calibration, 1-n
    ds.add_new(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.2")  # a SOP class: not listed
    ds.add_new(0x0020000E, "UI", ds.SeriesInstanceUID)
    ds.save_as(tmp_path / "in.dcm", enforce_file_format=True)
    back = pydicom.dcmread(tmp_path / "in.dcm")  # multi-valued elements as read: MultiValue
    result = deidentify(back, Options(modified_dates=True), KEYS)
    shift = KEYS.shift_days("P1")
    assert [
        _days(a, b) for a, b in zip(["20240110", "20240112"], result[0x00181200].value, strict=True)
    ] == [shift, shift]
    assert result[0x00081150].value == "1.2.840.10008.5.1.4.1.1.2"


def test_shift_date_keeps_precision() -> None:
    assert shift_date("20240301", -1) == "20240229"
    assert shift_date("2024", -400) == "2022"
    assert shift_date("garbage", -1) == "19000101"


def test_bundled_files_survive_and_read_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
        ds = pydicom.dcmread(pydicom.data.get_testdata_file(name))
        out = tmp_path / name
        deidentify(ds, Options(modified_dates=True, clean_descriptors=True), KEYS).save_as(
            out, enforce_file_format=True
        )
        back = pydicom.dcmread(out)
        assert back.PatientIdentityRemoved == "YES"
        assert not [e for e in back if e.tag.is_private]
