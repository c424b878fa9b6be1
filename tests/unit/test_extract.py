"""extract_file: header fields, character sets, hashes checked independently, hostile input."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from struct import unpack

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.encaps import generate_fragments

from libs.contracts.errors import DicomParseError, NotDicomError, PermanentError
from libs.dicom.extract import extract_file
from libs.dicom.header import MAX_TEXT_LENGTH
from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return Path(str(path))


def meta_end(path: Path) -> int:
    """End of the file meta group, from its Group Length (independent of the extractor)."""
    meta = pydicom.filereader.read_file_meta_info(path)
    return 132 + 12 + int(meta.FileMetaInformationGroupLength)


def synthetic(
    tmp_path: Path, name: str = "a.dcm", **overrides: object
) -> tuple[Path, pydicom.Dataset]:
    args: dict[str, object] = {
        "patient_id": "PID-7",
        "patient_name": "Иванов^Иван",
        "birth_date": "19650312",
        "sex": "M",
        "study_uid": synthetic_uid("x:study"),
        "series_uid": synthetic_uid("x:series"),
        "sop_uid": synthetic_uid("x:sop"),
        "modality": "CT",
        "rows": 32,
        "columns": 40,
        "study_date": "20240115",
        "accession": "ACC42",
        "study_description": "Chest CT",
        "series_number": 3,
        "instance_number": 17,
        "charset": "ISO_IR 192",
        "pixel_seed": 5,
    }
    args.update(overrides)
    ds = make_dataset(**args)  # type: ignore[arg-type]
    path = tmp_path / name
    write_instance(path, ds)
    return path, ds


# --- header fields ------------------------------------------------------------


def test_header_fields(tmp_path: Path) -> None:
    path, ds = synthetic(tmp_path)
    header, _ = extract_file(str(path))
    assert header.patient.model_dump() == {
        "patient_id": "PID-7",
        "issuer_of_patient_id": "",
        "patient_name": "Иванов^Иван",
        "birth_date": "19650312",
        "sex": "M",
    }
    assert header.study.model_dump() == {
        "study_uid": ds.StudyInstanceUID,
        "study_date": "20240115",
        "study_time": "101500",
        "accession_number": "ACC42",
        "study_description": "Chest CT",
        "study_id": "1",
        "referring_physician": "",
    }
    assert header.series.model_dump() == {
        "series_uid": ds.SeriesInstanceUID,
        "modality": "CT",
        "series_number": 3,
        "series_description": "CT synthetic series 3",
        "body_part": "CHEST",
    }
    assert header.instance.model_dump() == {
        "sop_instance_uid": ds.SOPInstanceUID,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "instance_number": 17,
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "specific_character_set": "ISO_IR 192",
        "rows": 32,
        "columns": 40,
        "number_of_frames": None,
    }


def test_header_matches_pydicom_on_its_test_files() -> None:
    for name in ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "rtplan.dcm"]:
        path = pydicom_file(name)
        header, _ = extract_file(str(path))
        ds = pydicom.dcmread(path)
        assert header.patient.patient_name == str(ds.PatientName)
        assert header.patient.patient_id == ds.PatientID
        assert header.study.study_uid == ds.StudyInstanceUID
        assert header.series.series_uid == ds.SeriesInstanceUID
        assert header.instance.sop_instance_uid == ds.SOPInstanceUID
        assert header.instance.rows == ds.get("Rows")
        assert header.study.study_date == ds.get("StudyDate", "")


def test_unparsable_is_becomes_none(tmp_path: Path) -> None:
    ds = make_dataset(
        patient_id="P", patient_name="A^B", study_uid="1.2", series_uid="1.3", sop_uid="1.4"
    )
    ds[0x00200011] = DataElement(0x00200011, "LO", "abc")  # SeriesNumber
    ds[0x00200013] = DataElement(0x00200013, "LO", "99999999999")  # InstanceNumber > 2**31
    ds[0x00280008] = DataElement(0x00280008, "LO", "1\\2")  # NumberOfFrames, two values
    write_instance(tmp_path / "a.dcm", ds)
    header, _ = extract_file(str(tmp_path / "a.dcm"))
    assert header.series.series_number is None
    assert header.instance.instance_number is None
    assert header.instance.number_of_frames is None


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
def test_text_is_made_safe(tmp_path: Path) -> None:
    path, _ = synthetic(
        tmp_path,
        patient_id="X" * 5000,
        study_description="with\x00nul",
        accession="A\\B",
    )
    header, _ = extract_file(str(path))
    assert len(header.patient.patient_id) == MAX_TEXT_LENGTH
    assert header.study.study_description == "withnul"
    assert header.study.accession_number == "A\\B"  # several values, as DICOM writes them


# --- character sets -------------------------------------------------------------


@pytest.mark.parametrize(
    ("charset", "codec", "name"),
    [
        ("ISO_IR 144", "iso8859_5", "Иванов^Иван"),
        ("ISO_IR 192", "utf_8", "Петрова^Анна=Петрова^Анна"),
        ("GB18030", "gb18030", "Wang^XiaoMing=王^小明"),
        ("ISO_IR 100", "latin_1", "Müller^José"),
    ],
)
def test_charsets_decode(tmp_path: Path, charset: str, codec: str, name: str) -> None:
    path, _ = synthetic(tmp_path, patient_name=name, charset=charset, study_description=name[:6])
    assert name.encode(codec) in path.read_bytes()  # really stored in that charset
    header, _ = extract_file(str(path))
    assert header.patient.patient_name == name
    assert header.study.study_description == name[:6]
    assert header.instance.specific_character_set == charset


@pytest.mark.parametrize(
    ("name", "charset", "expected"),
    [
        ("chrH31.dcm", "\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("chrI2.dcm", "\\ISO 2022 IR 149", "Hong^Gildong=洪^吉洞=홍^길동"),
        ("chrRuss.dcm", "ISO_IR 144", "Люкceмбypг"),
        ("chrX2.dcm", "GB18030", "Wang^XiaoDong=王^小东"),
        ("chrGreek.dcm", "ISO_IR 126", "Διονυσιος"),
    ],
)
def test_pydicom_charset_files(name: str, charset: str, expected: str) -> None:
    path = get_charset_files(name)[0]
    header, _ = extract_file(str(path))
    assert header.patient.patient_name == expected
    assert header.instance.specific_character_set == charset


def _relabel(path: Path, old: bytes, new: bytes) -> None:
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, new))


def test_unknown_charset_falls_back(tmp_path: Path) -> None:
    path, _ = synthetic(tmp_path, patient_name="Müller^José", charset="ISO_IR 100")
    _relabel(path, b"ISO_IR 100", b"ISO_IR 999")
    header, _ = extract_file(str(path))
    assert header.instance.specific_character_set == "ISO_IR 999"
    assert header.patient.patient_name == "Müller^José"  # the default is Latin-1 alike


def test_wrong_charset_does_not_crash(tmp_path: Path) -> None:
    path, _ = synthetic(tmp_path, patient_name="Müller^José", charset="ISO_IR 100")
    _relabel(path, b"ISO_IR 100", b"ISO_IR 192")  # Latin-1 bytes declared as UTF-8
    header, _ = extract_file(str(path))
    assert header.patient.patient_name == "M\ufffdller^Jos\ufffd"


# --- hashes ----------------------------------------------------------------------


def test_synthetic_hashes(tmp_path: Path) -> None:
    path, ds = synthetic(tmp_path)
    _, hashes = extract_file(str(path))
    assert hashes.file_sha256 == sha(path.read_bytes())
    assert hashes.content_sha256 == sha(ds.PixelData)
    assert hashes.has_pixels


def test_same_pixels_same_content_hash(tmp_path: Path) -> None:
    a, _ = synthetic(tmp_path, "a.dcm", sop_uid="1.2.3", patient_name="A^B")
    b, _ = synthetic(tmp_path, "b.dcm", sop_uid="1.2.4", patient_name="C^D")
    (_, xa), (_, xb) = extract_file(str(a)), extract_file(str(b))
    assert xa.content_sha256 == xb.content_sha256
    assert xa.file_sha256 != xb.file_sha256


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # explicit VR little endian
        "MR_small_implicit.dcm",  # implicit VR little endian
        "MR_small_bigendian.dcm",  # explicit VR big endian
        "ExplVR_BigEnd.dcm",
        "MR_small_padded.dcm",
    ],
)
def test_native_pixel_hash(name: str) -> None:
    path = pydicom_file(name)
    _, hashes = extract_file(str(path))
    assert hashes.file_sha256 == sha(path.read_bytes())
    assert hashes.content_sha256 == sha(pydicom.dcmread(path).PixelData)
    assert hashes.has_pixels


@pytest.mark.parametrize(
    "name", ["JPEG-lossy.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm"]
)
def test_encapsulated_pixel_hash(name: str) -> None:
    """Every item's value, the Basic Offset Table included, in order."""
    path = pydicom_file(name)
    _, hashes = extract_file(str(path))
    value = pydicom.dcmread(path).PixelData
    tag_group, tag_elem, bot_length = unpack("<HHL", value[:8])
    assert (tag_group, tag_elem) == (0xFFFE, 0xE000)
    bot = value[8 : 8 + bot_length]
    fragments = list(generate_fragments(value[8 + bot_length :]))
    assert fragments
    assert hashes.content_sha256 == sha(bot + b"".join(fragments))
    assert hashes.file_sha256 == sha(path.read_bytes())
    assert hashes.has_pixels


def test_deflated_hashes_the_deflated_dataset() -> None:
    path = pydicom_file("image_dfl.dcm")
    header, hashes = extract_file(str(path))
    data = path.read_bytes()
    assert header.instance.transfer_syntax_uid == "1.2.840.10008.1.2.1.99"
    assert header.instance.rows == 512
    assert hashes.content_sha256 == sha(data[meta_end(path) :])
    assert hashes.file_sha256 == sha(data)
    assert hashes.has_pixels


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm"])
def test_no_pixels_hashes_the_dataset(name: str) -> None:
    path = pydicom_file(name)
    _, hashes = extract_file(str(path))
    data = path.read_bytes()
    assert hashes.content_sha256 == sha(data[meta_end(path) :])
    assert hashes.file_sha256 == sha(data)
    assert not hashes.has_pixels


def test_big_file_streams_in_chunks(tmp_path: Path) -> None:
    """Over 1 MiB, so the pixel range spans several chunks."""
    path, ds = synthetic(tmp_path, rows=1024, columns=700)
    _, hashes = extract_file(str(path))
    assert hashes.content_sha256 == sha(ds.PixelData)
    assert hashes.file_sha256 == sha(path.read_bytes())


# --- hostile and broken input ------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.dcm").write_bytes(b"")
    with pytest.raises(NotDicomError, match=r"^empty file$"):
        extract_file(str(tmp_path / "e.dcm"))


@pytest.mark.parametrize(
    "content",
    [
        b"not a DICOM file\n" * 20,
        b"\x89PNG\r\n\x1a\n" + b"\0" * 300,
        b"short",
        b"\0" * 128 + b"DIC",
    ],
)
def test_not_dicom(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "x.dcm").write_bytes(content)
    with pytest.raises(NotDicomError, match=r"^not a DICOM file: no DICM preamble$"):
        extract_file(str(tmp_path / "x.dcm"))


def test_dataset_without_file_meta_is_not_dicom() -> None:
    with pytest.raises(NotDicomError):
        extract_file(str(pydicom_file("no_meta.dcm")))


def test_only_preamble(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_bytes(b"\0" * 128 + b"DICM")
    with pytest.raises(DicomParseError, match="no dataset"):
        extract_file(str(tmp_path / "x.dcm"))


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_pydicom_truncated_files(name: str) -> None:
    with pytest.raises(DicomParseError, match=r"^truncated: "):
        extract_file(str(pydicom_file(name)))


def test_truncated_pixel_data(tmp_path: Path) -> None:
    path, _ = synthetic(tmp_path)
    path.write_bytes(path.read_bytes()[:-700])
    with pytest.raises(DicomParseError, match=r"^truncated: Pixel Data declares 2560 bytes"):
        extract_file(str(path))


def test_truncated_encapsulated_pixel_data(tmp_path: Path) -> None:
    data = pydicom_file("JPEG-lossy.dcm").read_bytes()
    (tmp_path / "a.dcm").write_bytes(data[:-100])
    with pytest.raises(DicomParseError, match=r"^truncated: "):
        extract_file(str(tmp_path / "a.dcm"))
    (tmp_path / "b.dcm").write_bytes(data[:-8])  # only the sequence delimiter is missing
    with pytest.raises(DicomParseError, match="no sequence delimiter"):
        extract_file(str(tmp_path / "b.dcm"))


def test_every_cut_is_an_error_or_a_complete_dataset(tmp_path: Path) -> None:
    """Cut a file at every byte of its header: never a crash, never a half-read dataset.

    A cut exactly between two elements leaves a valid (shorter) dataset; anything
    else must be a PermanentError with a reason.
    """
    path, _ = synthetic(tmp_path)
    data = path.read_bytes()
    header_end = len(data) - 32 * 40 * 2
    cut = tmp_path / "cut.dcm"
    outcomes: dict[str, int] = {}
    for n in range(1, header_end + 40):
        cut.write_bytes(data[:n])
        try:
            _, hashes = extract_file(str(cut))
        except PermanentError as exc:
            assert str(exc)
            outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
            continue
        assert n <= header_end, f"cut at {n} inside the pixel data was accepted"
        assert not hashes.has_pixels
        outcomes["ok"] = outcomes.get("ok", 0) + 1
    assert outcomes["DicomParseError"] > outcomes.get("ok", 0)
    assert outcomes["NotDicomError"] == 131  # cuts inside the preamble and 'DICM'


def test_truncated_inside_an_element_header(tmp_path: Path) -> None:
    path, _ = synthetic(tmp_path)
    data = path.read_bytes()
    pixel_tag = data.rindex(b"\xe0\x7f\x10\x00")
    path.write_bytes(data[: pixel_tag + 6])
    with pytest.raises(DicomParseError, match=r"^truncated: "):
        extract_file(str(path))


@pytest.mark.parametrize(
    ("keyword", "message"),
    [
        ("SOPInstanceUID", "missing SOPInstanceUID"),
        ("StudyInstanceUID", "missing StudyInstanceUID"),
        ("SeriesInstanceUID", "missing SeriesInstanceUID"),
    ],
)
def test_missing_uid(tmp_path: Path, keyword: str, message: str) -> None:
    ds = make_dataset(
        patient_id="P", patient_name="A^B", study_uid="1.2", series_uid="1.3", sop_uid="1.4"
    )
    delattr(ds, keyword)
    write_instance(tmp_path / "a.dcm", ds)
    with pytest.raises(DicomParseError, match=rf"^{message}$"):
        extract_file(str(tmp_path / "a.dcm"))


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns when writing them
@pytest.mark.parametrize("bad", ["../../etc/passwd", "1.2.abc", "1." + "2" * 70, "1.2\\1.3"])
def test_invalid_uid(tmp_path: Path, bad: str) -> None:
    ds = make_dataset(
        patient_id="P", patient_name="A^B", study_uid="1.2", series_uid="1.3", sop_uid="1.4"
    )
    ds[0x00080018] = DataElement(0x00080018, "LO", bad)
    write_instance(tmp_path / "a.dcm", ds)
    with pytest.raises(DicomParseError, match=r"^invalid SOPInstanceUID: "):
        extract_file(str(tmp_path / "a.dcm"))


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="gone or not a regular file"):
        extract_file(str(tmp_path / "nope.dcm"))
    with pytest.raises(PermanentError, match="gone or not a regular file"):
        extract_file(str(tmp_path))


def test_stray_item_delimiter_at_top_level(tmp_path: Path) -> None:
    """pydicom stops reading at a top-level (FFFE,E00D); the unread rest must not pass."""
    path, _ = synthetic(tmp_path)
    data = path.read_bytes()
    at = data.index(b"\x08\x00\x60\x00")  # Modality, in the middle of the dataset
    path.write_bytes(data[:at] + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + data[at:])
    with pytest.raises(DicomParseError, match=r"^malformed: the dataset ends at offset"):
        extract_file(str(path))


def test_deeply_nested_sequences(tmp_path: Path) -> None:
    """Undefined-length sequences nested 3,000 deep: a readable error, not a crash."""
    path, _ = synthetic(tmp_path)
    data = path.read_bytes()
    at = data.index(b"\x08\x00\x60\x00")
    opening = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    nested = opening * 3000 + closing * 3000
    path.write_bytes(data[:at] + nested + data[at:])
    with pytest.raises(DicomParseError, match="nested too deeply"):
        extract_file(str(path))


def test_a_stamp_vouches_only_for_a_file_old_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storage-writer copies a stamped file without hashing it again: the stamp is
    `inode:size:mtime_ns:ctime_ns`, and a file changed within the last 2 s gets none."""
    path, _ = synthetic(tmp_path)
    _, fresh = extract_file(str(path))
    assert fresh.source_stamp is None, "just written: a later write could keep its times"
    monkeypatch.setattr("libs.storage.stamp.MIN_AGE_NS", 0)  # as if 2 s had passed
    _, old = extract_file(str(path))
    st = os.stat(path)
    assert old.source_stamp == f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
