"""The quick reader (libs/dicom/quickread.py) and pydicom's path give the same extraction:
same header, same DICOM JSON text, same hashes, or the same refusal, for every file of
pydicom's test data and character set files and for synthetic CT/MR files; and the quick
reader is the one that read the plain files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_charset_files, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

import libs.dicom.extract as extract
from libs.dicom.quickread import quick_read
from libs.dicom.synthetic import generate_corpus, make_dataset, synthetic_uid, write_instance


def outcome(path: Path, zero_hostile_preamble: bool = False) -> object:
    try:
        header, hashes = extract.extract_file(str(path), zero_hostile_preamble)
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return header.model_dump(), hashes.model_dump(exclude={"source_stamp"})


def both_paths(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object, bool]:
    """(quick path's outcome, pydicom path's outcome, whether the quick reader read it)."""
    quick = extract._quick(path.read_bytes())
    fast = outcome(path)
    with monkeypatch.context() as m:
        m.setattr(extract, "_quick", lambda _data: None)
        slow = outcome(path)
    return fast, slow, quick is not None


def pydicom_files() -> list[Path]:
    found = {Path(p) for p in get_testdata_files("*") + get_charset_files("*")}
    return sorted(p for p in found if p.is_file() and p.stat().st_size < 64 << 20)


def test_every_pydicom_test_file_gives_the_same_outcome_on_both_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read_quickly = []
    for path in pydicom_files():
        fast, slow, quick = both_paths(path, monkeypatch)
        assert fast == slow, path.name
        if quick:
            read_quickly.append(path.name)
    # Plain files are read quickly (explicit VR little endian, defined lengths; CT_small.dcm
    # has a sequence).
    assert {"chrGerm.dcm", "CT_small.dcm"} <= set(read_quickly)
    assert len(read_quickly) >= 50


def test_synthetic_ct_and_mr_are_read_quickly_with_the_same_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate_corpus(tmp_path, 12, rows=32, columns=32)
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(files) == 12
    for path in files:
        fast, slow, quick = both_paths(path, monkeypatch)
        assert quick, path
        assert fast == slow, path


def instance(tmp_path: Path, name: str, **overrides: object) -> Dataset:
    args: dict[str, object] = {
        "patient_id": "P1",
        "patient_name": "Müller^Anna",
        "birth_date": "19650312",
        "sex": "F",
        "study_uid": synthetic_uid("q:study"),
        "series_uid": synthetic_uid("q:series"),
        "sop_uid": synthetic_uid(f"q:{name}"),
        "modality": "MR",
        "rows": 8,
        "columns": 8,
        "study_description": "Kopf",
        "charset": "ISO_IR 100",
    }
    args.update(overrides)
    return make_dataset(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        ("ISO_IR 100", "Müller^José"),
        ("ISO_IR 144", "Иванов^Иван"),
        ("ISO_IR 192", "Wang^XiaoMing=王^小明"),
        ("GB18030", "Wang^XiaoMing=王^小明"),
        ("", "Smith^John"),
    ],
)
@pytest.mark.parametrize("implicit", [False, True])
def test_each_character_set_gives_the_same_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, charset: str, name: str, implicit: bool
) -> None:
    ds = instance(tmp_path, "c.dcm", charset=charset, patient_name=name)
    if not charset:
        del ds.SpecificCharacterSet
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    write_instance(tmp_path / "c.dcm", ds)
    fast, slow, quick = both_paths(tmp_path / "c.dcm", monkeypatch)
    assert quick
    assert fast == slow


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("undefined_lengths", [False, True])
def test_nested_sequences_are_read_quickly_with_the_same_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, undefined_lengths: bool, implicit: bool
) -> None:
    ds = instance(tmp_path, "s.dcm")
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    inner = Dataset()
    inner.CodeValue = "T-D3000"
    inner.CodeMeaning = "Brustkorb"
    item = Dataset()
    item.ReferencedSOPInstanceUID = synthetic_uid("q:other")
    item.add_new(0x00420011, "OB", b"\x01" * 2000)  # bulk data inside an item: a nested path
    item.AnatomicRegionSequence = [inner]
    ds.ReferencedImageSequence = [item, Dataset()]
    if undefined_lengths:
        for seq in (ds.ReferencedImageSequence, item.AnatomicRegionSequence):
            seq.is_undefined_length = True
            for each in seq:
                each.is_undefined_length_sequence_item = True
    write_instance(tmp_path / "s.dcm", ds)
    fast, slow, quick = both_paths(tmp_path / "s.dcm", monkeypatch)
    assert quick
    assert fast == slow
    assert isinstance(fast, tuple) and isinstance(fast[0], dict)
    assert '"BulkDataURI":"bulkdata/00081140/1/00420011"' in fast[0]["dicom_json"]


@pytest.mark.parametrize(
    "case",
    [
        "a private element read with implicit VR",
        "an item's character set",
        "truncated pixel data",
        "a cut element header",
    ],
)
def test_files_that_are_not_plain_take_pydicoms_path_with_the_same_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    ds = instance(tmp_path, "x.dcm")
    if case == "a private element read with implicit VR":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.add_new(0x00090010, "LO", "ACME 1.0")
        ds.add_new(0x00091001, "DS", "1.5")
    if case == "an item's character set":
        item = Dataset()
        item.SpecificCharacterSet = "ISO_IR 144"
        item.PatientName = "Иванов^Иван"
        ds.OtherPatientIDsSequence = [item]
    path = tmp_path / "x.dcm"
    write_instance(path, ds)
    data = path.read_bytes()
    if case == "truncated pixel data":
        path.write_bytes(data[:-10])
    if case == "a cut element header":
        read = quick_read(data)
        assert read is not None
        path.write_bytes(data[: read.end + 5])
    fast, slow, quick = both_paths(path, monkeypatch)
    assert not quick
    assert fast == slow
    if case.startswith(("truncated", "a cut")):
        assert isinstance(fast, tuple) and fast[0] == "DicomParseError"
