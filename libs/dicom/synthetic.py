"""Synthetic DICOM test data: proper Part-10 files, never real patient data.

Used by the demo stack (`generate_demo_set`), the tests (`make_dataset`,
`write_instance`) and the benchmarks (`generate_corpus`). Everything is
deterministic: UIDs come from `synthetic_uid(seed)` and pixels from a seeded
generator, so a test can predict both.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_SOP_CLASS = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}
# Fixed namespace: the same seed string always gives the same UID, on any machine.
_NAMESPACE = uuid.UUID("6f1c2a64-5d0b-4d52-9a55-2f0d7d6c1e01")


def synthetic_uid(seed: str) -> str:
    """A deterministic UID `2.25.<uuid5 as integer>` (PS3.5 §B.2), at most 44 characters."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, seed).int}"


def _pixels(modality: str, rows: int, columns: int, bits: int, seed: int) -> np.ndarray:
    """A disc phantom plus noise: looks like an image, compresses like one, differs per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[:rows, :columns]
    r = min(rows, columns) * (0.35 + 0.1 * rng.random())
    disc = (y - rows / 2) ** 2 + (x - columns / 2) ** 2 <= r * r
    noise = rng.normal(0.0, 20.0, size=(rows, columns))
    if bits == 8:
        return (np.where(disc, 160.0, 20.0) + noise / 4).clip(0, 255).astype(np.uint8)
    if modality == "CT":  # stored values; HU = value - 1024 via the rescale below
        return (np.where(disc, 1064.0, 24.0) + noise).clip(-32768, 32767).astype("<i2")
    return (np.where(disc, 900.0, 60.0) + noise).clip(0, 4095).astype("<u2")


def make_dataset(
    *,
    patient_id: str,
    patient_name: str,
    birth_date: str = "",
    sex: str = "",
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    modality: str = "CT",
    rows: int = 64,
    columns: int = 64,
    bits: int = 16,
    study_date: str = "20240115",
    accession: str = "",
    study_description: str = "",
    series_number: int = 1,
    instance_number: int = 1,
    charset: str = "ISO_IR 192",
    pixel_seed: int = 0,
) -> Dataset:
    """One CT or MR image with file meta, ready for `write_instance`.

    Text values are written in `charset` (pydicom encodes them on write), so a file
    made with `charset="ISO_IR 144"` really holds ISO 8859-5 bytes. CT is 16-bit
    signed with a rescale to Hounsfield units and a soft-tissue window; MR is 16-bit
    unsigned; `bits=8` gives unsigned 8-bit for either.
    """
    if modality not in _SOP_CLASS:
        raise ValueError(f"modality must be one of {sorted(_SOP_CLASS)}, not {modality!r}")
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    sop_class = _SOP_CLASS[modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOMFLOW_SYN"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = charset
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = "dicomflow synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = f"{modality} synthetic series {series_number}"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.BodyPartExamined = "CHEST" if modality == "CT" else "HEAD"
    ds.SliceThickness = "1.0"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0, 0, instance_number]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = synthetic_uid(f"frame:{series_uid}")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [0.7, 0.7]
    ds.BitsAllocated = bits
    ds.BitsStored = bits if bits == 8 or modality == "CT" else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if (modality == "CT" and bits == 16) else 0
    if modality == "CT":
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
    arr = _pixels(modality, rows, columns, bits, pixel_seed)
    ds.add_new(0x7FE00010, "OB" if bits == 8 else "OW", arr.tobytes())
    return ds


def write_instance(path: Path | str, ds: Dataset) -> None:
    """Write `ds` as a DICOM Part-10 file (preamble, 'DICM', file meta), creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# Demo patients: (name, charset, patient id, birth date, sex). All invented.
_DEMO_PATIENTS = [
    ("Иванов^Иван", "ISO_IR 144", "DEMO0001", "19650312", "M"),
    ("Петрова^Анна^Сергеевна", "ISO_IR 144", "DEMO0002", "19781105", "F"),
    ("Müller^José", "ISO_IR 100", "DEMO0003", "19591224", "M"),
    ("Smith^John", "ISO_IR 192", "DEMO0004", "19900101", "M"),
    ("Wang^XiaoMing=王^小明", "GB18030", "DEMO0005", "19850707", "M"),
]
# Per patient: studies as (date, [(modality, instances), ...]).
_DEMO_STUDIES = [
    [("20240115", [("CT", 10)])],
    [("20240203", [("MR", 8)])],
    [("20231120", [("CT", 6), ("MR", 6)])],
    [("20240301", [("CT", 6)]), ("20240320", [("MR", 6)])],
    [("20240410", [("CT", 6)])],
]


def generate_demo_set(root: Path) -> int:
    """Write a small demo NAS tree under `root` and return the number of instances (48).

    Five invented patients (two Cyrillic in ISO_IR 144, one accented Latin-1, one
    UTF-8, one GB18030 with an ideographic group), CT and MR series of 64×64 images,
    in two layouts: `YYYY-MM/<PatientID>/<series>/IMGnnnn.dcm` and flat files in `root`.
    """
    count = 0
    for p, (name, charset, pid, birth, sex) in enumerate(_DEMO_PATIENTS):
        for s_idx, (date, series) in enumerate(_DEMO_STUDIES[p]):
            study_uid = synthetic_uid(f"demo:{pid}:study:{s_idx}")
            for n, (modality, instances) in enumerate(series, start=1):
                series_uid = synthetic_uid(f"demo:{pid}:study:{s_idx}:series:{n}")
                for i in range(1, instances + 1):
                    sop_uid = synthetic_uid(f"demo:{pid}:study:{s_idx}:series:{n}:{i}")
                    ds = make_dataset(
                        patient_id=pid,
                        patient_name=name,
                        birth_date=birth,
                        sex=sex,
                        study_uid=study_uid,
                        series_uid=series_uid,
                        sop_uid=sop_uid,
                        modality=modality,
                        study_date=date,
                        accession=f"ACC{p}{s_idx}",
                        study_description=f"Demo {modality} study",
                        series_number=n,
                        instance_number=i,
                        charset=charset,
                        pixel_seed=count,
                    )
                    if p % 2 == 0:
                        folder = root / f"{date[:4]}-{date[4:6]}" / pid / f"{n:02d}_{modality}"
                        path = folder / f"IMG{i:04d}.dcm"
                    else:
                        path = root / f"{pid}_{s_idx}_{n}_{i:04d}.dcm"
                    write_instance(path, ds)
                    count += 1
    return count


_CORPUS_NAMES = ["Bench^Alpha", "Тестов^Пётр", "Bench^Beta", "Özdemir^Zoë"]
_CT_PER_SERIES = 40
_MR_PER_SERIES = 10


def generate_corpus(
    root: Path, count: int, *, rows: int = 512, columns: int = 512, seed: int = 0
) -> int:
    """Write `count` instances for benchmarks under `root/<PatientID>/<study>/<series>/`.

    Studies alternate a CT series (`rows`×`columns`, 16-bit signed, 40 images) and an
    MR series (half that size, 16-bit, 10 images); 2,000 files are about 0.9 GB. Each
    series' dataset is built once and only UIDs, InstanceNumber and pixels (a rolled
    copy of the series' base image, so every instance has distinct pixel bytes)
    change between instances: that keeps generation I/O-bound.
    """
    written = 0
    study = 0
    while written < count:
        pid = f"BENCH{seed:03d}{study:05d}"
        name = _CORPUS_NAMES[study % len(_CORPUS_NAMES)]
        study_uid = synthetic_uid(f"corpus:{seed}:study:{study}")
        plan = [
            ("CT", rows, columns, _CT_PER_SERIES),
            ("MR", rows // 2, columns // 2, _MR_PER_SERIES),
        ]
        for n, (modality, r, c, per_series) in enumerate(plan, start=1):
            series_uid = synthetic_uid(f"corpus:{seed}:study:{study}:series:{n}")
            ds = make_dataset(
                patient_id=pid,
                patient_name=name,
                birth_date="19700101",
                sex="O",
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=series_uid,
                modality=modality,
                rows=r,
                columns=c,
                study_date="20240115",
                accession=f"BA{study:06d}",
                study_description="Benchmark study",
                series_number=n,
                pixel_seed=seed * 1_000_003 + study * 7 + n,
            )
            base = np.frombuffer(ds.PixelData, dtype=np.uint16).copy()
            folder = root / pid / f"study{study:05d}" / f"{n:02d}_{modality}"
            for i in range(1, min(per_series, count - written) + 1):
                sop_uid = synthetic_uid(f"corpus:{seed}:study:{study}:series:{n}:{i}")
                ds.SOPInstanceUID = sop_uid
                ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
                ds.InstanceNumber = i
                ds.ImagePositionPatient = [0, 0, i]
                ds.PixelData = np.roll(base, i * 7919).tobytes()
                write_instance(folder / f"IMG{i:04d}.dcm", ds)
                written += 1
        study += 1
    return written
