"""Instances for the DICOMweb tests: synthetic studies (Cyrillic and accented names, several
dates, modalities and series) and pydicom's compressed and big-endian files under UIDs of
their own, stored and indexed the way the pipeline does (extractor, storage, indexer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncpg
from pydicom import dcmread
from pydicom.data import get_testdata_file

from libs.db.index import index_instance
from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from libs.storage.local import LocalStore
from tests.integration.test_jpg_converter_service import put_canonical

# Transfer syntaxes the preview tests decode (tests/unit/test_imaging_render.py).
CODEC_FILES = [
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",
    "CT_small.dcm",
    "examples_ybr_color.dcm",
]


@dataclass(frozen=True)
class Seeded:
    path: Path
    study: str
    series: str
    sop: str


PATIENTS = [
    # (id, name, study date, accession, modality, series count, instances per series)
    ("DW-1", "Иванов^Иван", "20240115", "ACC-1", "CT", 2, 2),
    ("DW-2", "Müller^José", "20231201", "ACC-2", "MR", 1, 1),
    ("DW-3", "Петров^Иван", "20220510", "ACC-3", "CT", 1, 1),
]


def synthetic_files(root: Path) -> list[Seeded]:
    out: list[Seeded] = []
    for pid, name, study_date, accession, modality, n_series, per_series in PATIENTS:
        study = synthetic_uid(f"dw-study-{pid}")
        for s in range(n_series):
            series = synthetic_uid(f"dw-series-{pid}-{s}")
            for i in range(per_series):
                sop = synthetic_uid(f"dw-sop-{pid}-{s}-{i}")
                ds = make_dataset(
                    patient_id=pid,
                    patient_name=name,
                    study_uid=study,
                    series_uid=series,
                    sop_uid=sop,
                    modality=modality,
                    study_date=study_date,
                    accession=accession,
                    study_description=f"{modality} study of {pid}",
                    series_number=s + 1,
                    instance_number=i + 1,
                    pixel_seed=i,
                )
                path = root / f"{sop}.dcm"
                write_instance(path, ds)
                out.append(Seeded(path, study, series, sop))
    return out


def codec_files(root: Path) -> list[Seeded]:
    """pydicom's files, re-identified (their UIDs are shared between variants): the
    dataset is written back unchanged otherwise, pixel data bytes and syntax included."""
    out: list[Seeded] = []
    study = synthetic_uid("dw-codecs")
    for n, name in enumerate(CODEC_FILES):
        ds = dcmread(get_testdata_file(name) or name)
        series, sop = synthetic_uid(f"dw-codec-series-{n}"), synthetic_uid(f"dw-codec-{name}")
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.PatientID, ds.PatientName = "DW-CODECS", "Codec^Files"
        path = root / f"{name}"
        ds.save_as(path, enforce_file_format=True)
        out.append(Seeded(path, study, series, sop))
    return out


async def seed(pool: asyncpg.Pool, store: LocalStore, root: Path) -> list[Seeded]:
    """Index everything once per database (the API tests share one per module)."""
    root.mkdir(parents=True, exist_ok=True)
    files = synthetic_files(root) + codec_files(root)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE instances")
        if not await conn.fetchval("SELECT count(*) FROM instances"):
            for file_id, f in enumerate(files, start=1):
                await index_instance(conn, await put_canonical(store, f.path, file_id))
    return files
