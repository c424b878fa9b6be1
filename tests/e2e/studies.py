"""Small synthetic studies written as files, for the source tests (Orthanc, ISO discs)."""

from __future__ import annotations

import uuid
from pathlib import Path

from libs.dicom.synthetic import make_dataset, write_instance


def uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def write_study(
    folder: Path,
    *,
    patient: str = "Test^Patient",
    series: int = 1,
    per_series: int = 3,
    study_date: str = "20240115",
) -> dict[str, Path]:
    """One patient's study; returns {SOPInstanceUID: file}. Pixels differ per instance."""
    pid = f"PID{uuid.uuid4().hex[:8]}"
    study = uid()
    seed = uuid.uuid4().int % 2**30
    out: dict[str, Path] = {}
    for s in range(series):
        series_uid = uid()
        for i in range(per_series):
            sop = uid()
            ds = make_dataset(
                patient_id=pid,
                patient_name=patient,
                study_uid=study,
                series_uid=series_uid,
                sop_uid=sop,
                rows=16,
                columns=16,
                series_number=s + 1,
                instance_number=i + 1,
                pixel_seed=seed + s * 1000 + i,
                study_date=study_date,
            )
            path = folder / f"S{s}I{i}.dcm"
            write_instance(path, ds)
            out[sop] = path
    return out
