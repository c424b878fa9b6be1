"""What the watcher reads from a dcm4chee archive's database, for each supported schema.

Read-only: plain SELECTs on the archive's own tables (nothing is created there). Studies are
read in the order of their change time (the later of the study's and its patient's
`updated_time`, on the archive's clock) and primary key, strictly after a watermark, so equal
timestamps never lose or repeat a study. Values the archive stores as `*` (its placeholder
for "empty") come back as "".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from libs.contracts.events import PatientAttrs, SeriesAttrs, StudyAttrs
from libs.db.dcm4chee import Watermark


class ArchiveDb(Protocol):
    """A read-only connection pool; SQL uses $1, $2, ... in ascending order, each once."""

    async def fetch(self, sql: str, *args: object) -> list[dict[str, Any]]: ...
    async def now(self) -> datetime: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class ArchiveStudy:
    pk: int
    changed_at: datetime
    patient: PatientAttrs
    study: StudyAttrs

    @property
    def watermark(self) -> Watermark:
        return Watermark(self.changed_at, self.pk)


@dataclass(frozen=True)
class ArchiveFile:
    """One instance of a study and where the archive says its file is."""

    series: SeriesAttrs
    sop_instance_uid: str
    sop_class_uid: str
    storage: str  # 5.x: location.storage_id; 2.x: filesystem.dirpath; "" when none recorded
    path: str  # relative to the storage
    size: int
    status: int  # 5.x location.status (0 = OK); 2.x always 0


def text(value: object) -> str:
    """The archive's text value; `*` (dcm4chee-arc's placeholder) and NULL are empty."""
    if value is None:
        return ""
    s = str(value).strip()
    return "" if s == "*" else s


_CHANGED_ARC5 = """
SELECT * FROM (
  SELECT st.pk, GREATEST(st.updated_time, p.updated_time) AS changed_at, st.study_iuid,
         st.study_date, st.study_time, st.accession_no, st.study_desc, st.study_id,
         rp.alphabetic_name AS ref_phys, pn.alphabetic_name AS pat_name, p.pat_birthdate,
         p.pat_sex, pid.pat_id, pid.entity_id AS issuer
    FROM study st
    JOIN patient p ON p.pk = st.patient_fk
    LEFT JOIN person_name pn ON pn.pk = p.pat_name_fk
    LEFT JOIN person_name rp ON rp.pk = st.ref_phys_name_fk
    LEFT JOIN patient_id pid
           ON pid.pk = (SELECT MIN(x.pk) FROM patient_id x WHERE x.patient_fk = p.pk)
) s
WHERE s.changed_at <= $1 AND (s.changed_at > $2 OR (s.changed_at = $3 AND s.pk > $4))
ORDER BY s.changed_at, s.pk LIMIT $5
"""

_FILES_ARC5 = """
SELECT st.pk AS study_pk, se.series_iuid, se.modality, se.series_no, se.series_desc, se.body_part,
       i.sop_iuid, i.sop_cuid, l.storage_id AS storage, l.storage_path AS path,
       l.object_size AS size, l.status
  FROM study st
  JOIN series se ON se.study_fk = st.pk
  JOIN instance i ON i.series_fk = se.pk
  LEFT JOIN location l ON l.instance_fk = i.pk AND l.object_type = 0
  LEFT JOIN rejected_instance ri
         ON ri.study_iuid = st.study_iuid AND ri.series_iuid = se.series_iuid
        AND ri.sop_iuid = i.sop_iuid
 WHERE st.pk IN ({pks}) AND se.rejection_state <> 2 AND ri.pk IS NULL
 ORDER BY st.pk, se.pk, i.pk, l.status, l.pk
"""

_CHANGED_V2 = """
SELECT * FROM (
  SELECT st.pk, GREATEST(st.updated_time, p.updated_time) AS changed_at, st.study_iuid,
         st.study_datetime, st.accession_no, st.study_desc, p.pat_id, p.pat_name,
         p.pat_birthdate, p.pat_sex
    FROM study st JOIN patient p ON p.pk = st.patient_fk
) s
WHERE s.changed_at <= $1 AND (s.changed_at > $2 OR (s.changed_at = $3 AND s.pk > $4))
ORDER BY s.changed_at, s.pk LIMIT $5
"""

_FILES_V2 = """
SELECT se.study_fk AS study_pk, se.series_iuid, se.modality, i.sop_iuid, i.sop_cuid,
       fs.dirpath AS storage, f.filepath AS path, f.file_size AS size
  FROM series se
  JOIN instance i ON i.series_fk = se.pk
  LEFT JOIN files f ON f.instance_fk = i.pk
  LEFT JOIN filesystem fs ON fs.pk = f.filesystem_fk
 WHERE se.study_fk IN ({pks})
 ORDER BY se.study_fk, se.pk, i.pk, f.pk
"""


class Archive:
    """The archive's studies and files, for one schema (`arc5` or `dcm4chee2`)."""

    def __init__(self, db: ArchiveDb, schema: str) -> None:
        if schema not in ("arc5", "dcm4chee2"):
            raise ValueError(f"unknown dcm4chee schema {schema!r}")
        self.db = db
        self.arc5 = schema == "arc5"

    async def changed_studies(
        self, after: Watermark, *, settle_seconds: float, limit: int
    ) -> list[ArchiveStudy]:
        """Studies changed after the watermark, and not within the last `settle_seconds` (a
        transaction still open in the archive may yet commit a row with an earlier time)."""
        cutoff = await self.db.now() - timedelta(seconds=settle_seconds)
        sql = _CHANGED_ARC5 if self.arc5 else _CHANGED_V2
        rows = await self.db.fetch(
            sql, cutoff, after.changed_at, after.changed_at, after.study_pk, limit
        )
        return [_study_arc5(r) if self.arc5 else _study_v2(r) for r in rows]

    async def files(self, study_pks: Sequence[int]) -> dict[int, list[ArchiveFile]]:
        """Every instance of these studies (rejected ones left out), one per instance: the
        first usable location when there are several. One query for the whole batch."""
        if not study_pks:
            return {}
        marks = ", ".join(f"${n}" for n in range(1, len(study_pks) + 1))
        sql = (_FILES_ARC5 if self.arc5 else _FILES_V2).format(pks=marks)
        by_study: dict[int, dict[str, ArchiveFile]] = {pk: {} for pk in study_pks}
        for r in await self.db.fetch(sql, *study_pks):
            f, files = _file(r), by_study[int(r["study_pk"])]
            old = files.get(f.sop_instance_uid)
            if old is None or (old.status != 0 and f.status == 0):
                files[f.sop_instance_uid] = f
        return {pk: list(files.values()) for pk, files in by_study.items()}

    async def existing(self, study_uids: Sequence[str]) -> set[str]:
        """Of these StudyInstanceUIDs, those the archive still has (a `study` row: both
        schemas delete it with the study)."""
        if not study_uids:
            return set()
        marks = ", ".join(f"${n}" for n in range(1, len(study_uids) + 1))
        rows = await self.db.fetch(
            f"SELECT study_iuid FROM study WHERE study_iuid IN ({marks})", *study_uids
        )
        return {str(r["study_iuid"]) for r in rows}


def _study_arc5(r: dict[str, Any]) -> ArchiveStudy:
    return ArchiveStudy(
        pk=int(r["pk"]),
        changed_at=r["changed_at"],
        patient=PatientAttrs(
            patient_id=text(r["pat_id"]),
            issuer_of_patient_id=text(r["issuer"]),
            patient_name=text(r["pat_name"]),
            birth_date=text(r["pat_birthdate"]),
            sex=text(r["pat_sex"]),
        ),
        study=StudyAttrs(
            study_uid=text(r["study_iuid"]),
            study_date=text(r["study_date"]),
            study_time=text(r["study_time"]),
            accession_number=text(r["accession_no"]),
            study_description=text(r["study_desc"]),
            study_id=text(r["study_id"]),
            referring_physician=text(r["ref_phys"]),
        ),
    )


def _study_v2(r: dict[str, Any]) -> ArchiveStudy:
    when = r["study_datetime"]
    return ArchiveStudy(
        pk=int(r["pk"]),
        changed_at=r["changed_at"],
        patient=PatientAttrs(
            patient_id=text(r["pat_id"]),
            patient_name=text(r["pat_name"]),
            birth_date=text(r["pat_birthdate"]),
            sex=text(r["pat_sex"]),
        ),
        study=StudyAttrs(
            study_uid=text(r["study_iuid"]),
            study_date=when.strftime("%Y%m%d") if isinstance(when, datetime) else "",
            study_time=when.strftime("%H%M%S") if isinstance(when, datetime) else "",
            accession_number=text(r["accession_no"]),
            study_description=text(r["study_desc"]),
        ),
    )


def _file(r: dict[str, Any]) -> ArchiveFile:
    number = r.get("series_no")
    return ArchiveFile(
        series=SeriesAttrs(
            series_uid=text(r["series_iuid"]),
            modality=text(r["modality"]),
            series_number=int(number) if number is not None else None,
            series_description=text(r.get("series_desc")),
            body_part=text(r.get("body_part")),
        ),
        sop_instance_uid=text(r["sop_iuid"]),
        sop_class_uid=text(r["sop_cuid"]),
        storage=r["storage"] or "",
        path=r["path"] or "",
        size=int(r["size"] or 0),
        status=int(r.get("status") or 0),
    )
