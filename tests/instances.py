"""Synthetic instances on disk, extracted as the pipeline's extractor would, and the
`dicom.unique.v1` events that hand them to the storage-writer."""

from __future__ import annotations

from pathlib import Path

from libs.contracts.events import FileRef, InstanceUnique
from libs.dicom.extract import extract_file
from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance


def unique_events(folder: Path, count: int, prefix: str, size: int) -> list[InstanceUnique]:
    """`count` new instances of one study and series (patient P1), `size`×`size` pixels each,
    written into `folder`; UIDs derived from `prefix`."""
    out = []
    for n in range(count):
        ds = make_dataset(
            patient_id="P1",
            patient_name="Doe^Jane",
            study_uid=synthetic_uid(f"{prefix}:study"),
            series_uid=synthetic_uid(f"{prefix}:series"),
            sop_uid=synthetic_uid(f"{prefix}:{n}"),
            rows=size,
            columns=size,
            pixel_seed=n,
        )
        path = folder / f"{n}.dcm"
        write_instance(path, ds)
        header, hashes = extract_file(str(path))
        out.append(
            InstanceUnique(
                correlation_id=f"c{n}",
                source="nas",
                file=FileRef(file_id=n + 1, uri=path.as_uri(), size=path.stat().st_size),
                header=header,
                hashes=hashes,
                disposition="new",
            )
        )
    return out
