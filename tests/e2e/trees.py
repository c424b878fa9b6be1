"""Synthetic NAS trees with known outcomes: originals, exact copies, a same-UID conflict,
same pixels under another UID, and files that are not (valid) DICOM."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from libs.dicom.synthetic import make_dataset, write_instance

PATIENTS = [
    ("Иванов^Иван", "ISO_IR 144"),
    ("Müller^José", "ISO_IR 100"),
    ("Smith^John", "ISO_IR 192"),
    ("Петрова^Анна", "ISO_IR 192"),
]


def uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


@dataclass
class Expected:
    files: int = 0
    new: int = 0
    flagged: int = 0
    duplicates: int = 0
    conflicts: int = 0
    failed: int = 0
    patient_names: list[str] = field(default_factory=list)
    study_uids: list[str] = field(default_factory=list)

    def counters(self) -> dict[str, int]:
        return {
            "files_scanned": self.files,
            "pending": 0,
            "new_instances": self.new,
            "flagged_same_content": self.flagged,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "failed": self.failed,
        }


def build_tree(
    root: Path,
    *,
    series_per_study: int = 2,
    per_series: int = 40,
    patients: int = 4,
    extras: bool = True,
) -> Expected:
    """`patients` studies (one per patient) × `series_per_study` × `per_series` instances,
    in mixed layouts; with `extras`, 5 exact copies, one conflict, one same-pixels-other-UID
    instance, a zero-byte, a text and a truncated file."""
    exp = Expected()
    originals: list[Path] = []
    seed0 = uuid.uuid4().int % 2**40  # each tree's pixels differ from every other tree's
    for p in range(patients):
        name, charset = PATIENTS[p % len(PATIENTS)]
        pid = f"PID{uuid.uuid4().hex[:8]}"
        study = uid()
        exp.patient_names.append(name)
        exp.study_uids.append(study)
        for s in range(series_per_study):
            series = uid()
            modality = "CT" if s % 2 == 0 else "MR"
            folder = root / (f"2024-0{p % 9 + 1}" if p % 2 == 0 else "") / pid / f"S{s}"
            for i in range(per_series):
                ds = make_dataset(
                    patient_id=pid,
                    patient_name=name,
                    birth_date="19700101",
                    sex="M",
                    study_uid=study,
                    series_uid=series,
                    sop_uid=uid(),
                    modality=modality,
                    rows=32,
                    columns=32,
                    study_date=f"2024{p % 9 + 1:02d}15",
                    accession=f"ACC{p}",
                    study_description=f"Study {p}",
                    series_number=s + 1,
                    instance_number=i + 1,
                    charset=charset,
                    pixel_seed=seed0 + p * 100_000 + s * 1000 + i,
                )
                path = folder / f"IMG{i:04d}.dcm"
                write_instance(path, ds)
                originals.append(path)
    exp.files = exp.new = len(originals)
    if not extras:
        return exp
    copies = root / "copies"
    copies.mkdir(parents=True)
    for n, src in enumerate(originals[:5]):
        shutil.copyfile(src, copies / f"copy{n}.dcm")
    exp.files += 5
    exp.duplicates += 5
    # Same SOPInstanceUID as an original, other pixels: a conflict (never overwrites).
    first = originals[10]
    from pydicom import dcmread

    ds = dcmread(first)
    ds.PixelData = bytes(b ^ 0xFF for b in ds.PixelData)
    write_instance(root / "conflict" / "same-uid-other-pixels.dcm", ds)
    exp.files += 1
    exp.conflicts += 1
    # Same pixels, another SOPInstanceUID: stored, and flagged.
    ds = dcmread(originals[20])
    ds.SOPInstanceUID = uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    write_instance(root / "flagged" / "same-pixels-other-uid.dcm", ds)
    exp.files += 1
    exp.new += 1
    exp.flagged += 1
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.dcm").write_bytes(b"")
    (bad / "notes.txt").write_text("not a DICOM file\n")
    data = originals[30].read_bytes()
    (bad / "truncated.dcm").write_bytes(data[: len(data) - 700])
    exp.files += 3
    exp.failed += 3
    return exp
