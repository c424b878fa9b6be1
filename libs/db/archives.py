"""What an archive of a study (or one of its series) holds: the study's naming attributes and
every indexed instance, in one query, in a stable order; with what a DICOMDIR's patient,
study, series and image records need (PS3.3 F.5)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from libs.db import Conn


@dataclass(frozen=True)
class ArchiveInstance:
    series_uid: str
    series_number: int | None
    series_description: str
    sop_instance_uid: str
    instance_number: int | None
    size_bytes: int
    file_sha256: str
    indexed_at: datetime
    modality: str = ""
    sop_class_uid: str = ""
    transfer_syntax_uid: str = ""
    revision_key: str | None = None  # the latest header correction's bytes (ADR 0025)


@dataclass(frozen=True)
class StudyHeader:
    """The patient and study attributes of a DICOMDIR, as indexed."""

    patient_id: str = ""
    study_time: str = ""
    study_id: str = ""
    accession_number: str = ""
    study_description: str = ""


@dataclass(frozen=True)
class ArchiveListing:
    study_uid: str
    patient_name: str
    study_date: date | None
    instances: list[ArchiveInstance]
    header: StudyHeader = StudyHeader()


async def archive_listing(
    conn: Conn, study_uid: str, series_uid: str | None = None
) -> ArchiveListing | None:
    """None when the study (or the series within it) is unknown."""
    rows = await conn.fetch(
        """SELECT p.patient_name, st.study_date, se.series_uid, se.series_number,
                  se.series_description, i.sop_instance_uid, i.instance_number, i.size_bytes,
                  i.file_sha256, i.indexed_at, p.patient_id, st.study_time, st.study_id,
                  st.accession_number, st.study_description, se.modality, i.sop_class_uid,
                  i.transfer_syntax_uid, i.revision_key
             FROM studies st
             JOIN patients p ON p.id = st.patient_pk
             JOIN series se ON se.study_uid = st.study_uid
             JOIN instances i ON i.series_uid = se.series_uid
            WHERE st.study_uid = $1 AND ($2::text IS NULL OR se.series_uid = $2)
            ORDER BY se.series_number NULLS LAST, se.series_uid,
                     i.instance_number NULLS LAST, i.sop_instance_uid""",
        study_uid,
        series_uid,
    )
    if not rows:
        return None
    first = rows[0]
    return ArchiveListing(
        study_uid=study_uid,
        patient_name=first["patient_name"],
        study_date=first["study_date"],
        header=StudyHeader(
            patient_id=first["patient_id"],
            study_time=first["study_time"],
            study_id=first["study_id"],
            accession_number=first["accession_number"],
            study_description=first["study_description"],
        ),
        instances=[
            ArchiveInstance(
                series_uid=r["series_uid"],
                series_number=r["series_number"],
                series_description=r["series_description"],
                sop_instance_uid=r["sop_instance_uid"],
                instance_number=r["instance_number"],
                size_bytes=r["size_bytes"],
                file_sha256=r["file_sha256"],
                indexed_at=r["indexed_at"],
                modality=r["modality"],
                sop_class_uid=r["sop_class_uid"],
                transfer_syntax_uid=r["transfer_syntax_uid"],
                revision_key=r["revision_key"],
            )
            for r in rows
        ],
    )
