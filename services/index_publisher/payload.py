"""What the central index receives for one study revision: the default flat object that
hospitals' existing central indexers accept, or the richer native v1 document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from libs.contracts.events import StudyMetadata
from libs.db.index import parse_da

NATIVE_FORMAT = "dicomflow.study.v1"


@dataclass(frozen=True)
class StudyKeys:
    """Surrogate keys the receiver indexes on: the index's patient row, the study's
    publication row (both stable for the life of the database)."""

    study_pk: int
    patient_pk: int | None


def study_datetime(study_date: str, study_time: str) -> str | None:
    """DICOM DA + TM to ISO 8601 (`2024-03-01T10:15:30`), the date alone without a usable
    time, None without a valid date. Fractions of a second are dropped."""
    day = parse_da(study_date)
    if day is None:
        return None
    digits = study_time.strip().split(".")[0].replace(":", "")
    if len(digits) < 2 or len(digits) % 2 or len(digits) > 6 or not digits.isdigit():
        return day.isoformat()
    hh, mm, ss = int(digits[:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    if hh > 23 or mm > 59 or ss > 60:
        return day.isoformat()
    return f"{day.isoformat()}T{hh:02d}:{mm:02d}:{min(ss, 59):02d}"


def default_payload(event: StudyMetadata, keys: StudyKeys, center: str) -> dict[str, Any]:
    return {
        "patient_pk": keys.patient_pk,
        "patient_id": event.patient.patient_id,
        "patient_name": event.patient.patient_name,
        "study_pk": keys.study_pk,
        "study_iuid": event.study_uid,
        "study_datetime": study_datetime(event.study_date, event.study_time),
        "study_description": event.study_description,
        "study_modality": "\\".join(event.modalities),  # DICOM multi-value, e.g. CT\SR
        "study_series": event.series_count,
        "study_instances": event.instance_count,
        "center": center,
    }


def native_payload(event: StudyMetadata, keys: StudyKeys, center: str) -> dict[str, Any]:
    p = event.patient
    birth_date = parse_da(p.birth_date)
    return {
        "format": NATIVE_FORMAT,
        "center": center,
        "study_uid": event.study_uid,
        "revision": event.revision,
        "stable": event.stable,
        "study_pk": keys.study_pk,
        "patient_pk": keys.patient_pk,
        "patient": {
            "patient_id": p.patient_id,
            "issuer_of_patient_id": p.issuer_of_patient_id,
            "patient_name": p.patient_name,
            "birth_date": birth_date.isoformat() if birth_date else None,
            "sex": p.sex,
        },
        "study": {
            "study_datetime": study_datetime(event.study_date, event.study_time),
            "study_date": event.study_date,
            "study_time": event.study_time,
            "accession_number": event.accession_number,
            "study_description": event.study_description,
            "modalities": list(event.modalities),
            "series_count": event.series_count,
            "instance_count": event.instance_count,
            "size_bytes": event.size_bytes,
        },
        "event_id": event.event_id,
        "correlation_id": event.correlation_id,
        "occurred_at": event.occurred_at.isoformat(),
    }


PAYLOADS = {"default": default_payload, "native": native_payload}


def idempotency_key(center: str, event: StudyMetadata) -> str:
    """One key per study revision and site: a retry or redelivery of the same revision
    carries the same key, so the receiver applies it once."""
    return f"dicomflow:{center}:{event.study_uid}:{event.revision}"
