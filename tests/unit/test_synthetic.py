"""Synthetic data: proper Part-10 files, deterministic, in the charsets they claim."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from libs.dicom.synthetic import (
    CT_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    generate_corpus,
    generate_demo_set,
    make_dataset,
    synthetic_uid,
    write_instance,
)
from libs.dicom.uids import is_valid_uid


def _ds(**overrides: object) -> pydicom.Dataset:
    args: dict[str, object] = {
        "patient_id": "PID1",
        "patient_name": "Test^Patient",
        "study_uid": synthetic_uid("t:study"),
        "series_uid": synthetic_uid("t:series"),
        "sop_uid": synthetic_uid("t:sop"),
    }
    args.update(overrides)
    return make_dataset(**args)  # type: ignore[arg-type]


def test_synthetic_uid_is_deterministic_and_valid() -> None:
    assert synthetic_uid("a") == synthetic_uid("a")
    assert synthetic_uid("a") != synthetic_uid("b")
    assert synthetic_uid("a").startswith("2.25.")
    assert all(is_valid_uid(synthetic_uid(str(n))) for n in range(1000))


def test_written_file_is_part10(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "a.dcm"
    write_instance(path, _ds())
    data = path.read_bytes()
    assert data[:128] == b"\0" * 128 and data[128:132] == b"DICM"
    ds = pydicom.dcmread(path)  # force=False: a conformant file
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert "FileMetaInformationGroupLength" in ds.file_meta


def test_ct_image(tmp_path: Path) -> None:
    write_instance(tmp_path / "ct.dcm", _ds(modality="CT", rows=32, columns=48))
    ds = pydicom.dcmread(tmp_path / "ct.dcm")
    assert ds.SOPClassUID == CT_IMAGE_STORAGE
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelRepresentation) == (32, 48, 16, 1)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.RescaleSlope, ds.RescaleIntercept) == (1, -1024)
    assert (ds.WindowCenter, ds.WindowWidth) == (40, 400)
    arr = ds.pixel_array
    assert arr.shape == (32, 48) and arr.dtype == np.int16


def test_mr_image(tmp_path: Path) -> None:
    write_instance(tmp_path / "mr.dcm", _ds(modality="MR"))
    ds = pydicom.dcmread(tmp_path / "mr.dcm")
    assert ds.SOPClassUID == MR_IMAGE_STORAGE
    assert ds.PixelRepresentation == 0
    assert ds.pixel_array.dtype == np.uint16
    assert "RescaleSlope" not in ds


def test_eight_bit(tmp_path: Path) -> None:
    write_instance(tmp_path / "a.dcm", _ds(bits=8))
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    assert ds.BitsAllocated == 8 and ds.pixel_array.dtype == np.uint8


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="modality"):
        _ds(modality="US")
    with pytest.raises(ValueError, match="bits"):
        _ds(bits=12)


def test_pixels_are_deterministic_per_seed() -> None:
    assert _ds(pixel_seed=1).PixelData == _ds(pixel_seed=1).PixelData
    assert _ds(pixel_seed=1).PixelData != _ds(pixel_seed=2).PixelData


@pytest.mark.parametrize(
    ("charset", "codec", "name"),
    [
        ("ISO_IR 144", "iso8859_5", "Иванов^Иван"),
        ("ISO_IR 100", "latin_1", "Müller^José"),
        ("ISO_IR 192", "utf_8", "Петрова^Анна"),
        ("GB18030", "gb18030", "Wang^XiaoMing=王^小明"),
    ],
)
def test_names_are_encoded_in_the_declared_charset(
    tmp_path: Path, charset: str, codec: str, name: str
) -> None:
    write_instance(tmp_path / "a.dcm", _ds(patient_name=name, charset=charset))
    assert name.encode(codec) in (tmp_path / "a.dcm").read_bytes()
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    assert ds.SpecificCharacterSet == charset
    assert str(ds.PatientName) == name


def test_demo_set(tmp_path: Path) -> None:
    count = generate_demo_set(tmp_path)
    files = sorted(tmp_path.rglob("*.dcm"))
    assert 40 <= count <= 60 and len(files) == count
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    charsets = {str(ds.PatientName): ds.SpecificCharacterSet for ds in datasets}
    cyrillic = [n for n, cs in charsets.items() if cs == "ISO_IR 144"]
    assert len(cyrillic) >= 2 and "Иванов^Иван" in cyrillic
    assert charsets["Müller^José"] == "ISO_IR 100"
    assert {ds.Modality for ds in datasets} == {"CT", "MR"}
    assert len({ds.SOPInstanceUID for ds in datasets}) == count
    assert all(is_valid_uid(ds.SOPInstanceUID) for ds in datasets)
    layouts = Counter(
        "flat" if f.parent == tmp_path else f.relative_to(tmp_path).parts[0][:4] for f in files
    )
    assert layouts["flat"] > 0 and any(k.isdigit() for k in layouts)
    # Deterministic: a second tree is byte-identical.
    generate_demo_set(tmp_path / "again")
    assert (tmp_path / "again" / files[0].relative_to(tmp_path)).read_bytes() == files[
        0
    ].read_bytes()


def test_corpus_small(tmp_path: Path) -> None:
    assert generate_corpus(tmp_path, 55, rows=64, columns=64, seed=3) == 55
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(files) == 55
    datasets = [pydicom.dcmread(f) for f in files]
    by_modality = Counter((ds.Modality, ds.Rows) for ds in datasets)
    assert by_modality == {("CT", 64): 45, ("MR", 32): 10}
    assert len({ds.SOPInstanceUID for ds in datasets}) == 55
    assert len({ds.PixelData for ds in datasets}) == 55  # every instance its own pixels
    assert len({ds.StudyInstanceUID for ds in datasets}) == 2
    assert datasets[0].SOPInstanceUID == synthetic_uid(
        f"corpus:3:study:0:series:{1 if datasets[0].Modality == 'CT' else 2}:"
        f"{datasets[0].InstanceNumber}"
    )


def test_full_size_corpus_has_realistic_file_sizes(tmp_path: Path) -> None:
    """The generation speed is printed by `make bench` (a timed assertion here failed on a
    loaded machine and said nothing about the product)."""
    generate_corpus(tmp_path, 100)  # 512×512 CT and 256×256 MR
    sizes = {f.stat().st_size // 1000 for f in tmp_path.rglob("*.dcm")}
    assert min(sizes) >= 131 and max(sizes) <= 530
