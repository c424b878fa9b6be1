"""One stored instance de-identified into a new file: the function the export runs in the
isolated worker pool (`libs.runtime.sandbox`), since it parses stored files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pydicom

from libs.deid.burned_in import burned_in_risk
from libs.deid.deidentify import Keys, Options, deidentify

# Elements above this size are read from the file when written, not held in memory.
DEFER_SIZE = "1 MB"


@dataclass(frozen=True)
class FileResult:
    """What became of one instance; the UIDs and patient are the de-identified ones."""

    excluded: str | None  # why it was left out (burned-in annotation risk), or None
    patient: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    modality: str = ""
    size: int = 0
    sha256: str = ""


def deidentify_file(
    source: str, target: str, options: Options, secret: bytes, include_burned_in: bool
) -> FileResult:
    """Read `source`, write its de-identified copy to `target` (Part 10, same transfer
    syntax: the pixel data is copied as it is)."""
    keys = Keys(secret)
    ds = pydicom.dcmread(source, defer_size=DEFER_SIZE)
    risk = burned_in_risk(ds)
    modality = str(ds.get("Modality", "") or "")
    if risk is not None and not include_burned_in:
        return FileResult(
            excluded=risk,
            patient=keys.pseudonym(str(ds.get("PatientID", "") or "")),
            study_uid=keys.uid(str(ds.get("StudyInstanceUID", ""))),
            series_uid=keys.uid(str(ds.get("SeriesInstanceUID", ""))),
            sop_uid=keys.uid(str(ds.get("SOPInstanceUID", ""))),
            modality=modality,
        )
    deidentify(ds, options, keys)
    ds.save_as(target, enforce_file_format=True)
    digest = hashlib.sha256()
    with open(target, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return FileResult(
        excluded=None,
        patient=str(ds.PatientID),
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_uid=str(ds.SOPInstanceUID),
        modality=modality,
        size=Path(target).stat().st_size,
        sha256=digest.hexdigest(),
    )
