"""What an import task has done so far, broken down: per patient, per modality, rates and
failure reasons grouped. Everything is read from the ledger and the index (nothing is
counted twice, and a restart loses nothing)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from libs.db import Conn

RECENT_SECONDS = 60


@dataclass(frozen=True)
class PatientStats:
    patient_id: str
    patient_name: str
    birth_date: date | None
    sex: str
    new_to_index: bool
    studies: int
    new_instances: int
    duplicates: int
    conflicts: int
    size_bytes: int


@dataclass(frozen=True)
class ModalityStats:
    modality: str
    new_instances: int
    duplicates: int
    conflicts: int
    size_bytes: int


@dataclass(frozen=True)
class FailureGroup:
    stage: str | None
    reason: str | None
    files: int
    example: str


@dataclass(frozen=True)
class Rates:
    elapsed_seconds: float
    files_done: int
    bytes_done: int
    files_per_second: float
    bytes_per_second: float
    recent_files_per_second: float  # over the last RECENT_SECONDS
    eta_seconds: float | None  # pending / recent rate; None while nothing moves


@dataclass(frozen=True)
class TaskStats:
    patients_total: int
    patients: list[PatientStats]
    modalities: list[ModalityStats]
    rates: Rates
    failure_groups: list[FailureGroup]


_BY = """count(*) FILTER (WHERE f.status = 'indexed') AS new_instances,
         count(*) FILTER (WHERE f.status = 'duplicate') AS duplicates,
         count(*) FILTER (WHERE f.status = 'conflict') AS conflicts,
         coalesce(sum(f.size) FILTER (WHERE f.status = 'indexed'), 0)::bigint AS size_bytes"""


async def task_stats(
    conn: Conn, task_id: str, *, patients_limit: int, groups_limit: int = 100
) -> TaskStats:
    patients = await conn.fetch(
        f"""SELECT p.patient_id, p.patient_name, p.birth_date, p.sex,
                   coalesce(first.task_id = $1::uuid, false) AS new_to_index,
                   count(DISTINCT f.study_uid) AS studies, {_BY},
                   count(*) OVER () AS total
              FROM ingest_files f
              JOIN studies s ON s.study_uid = f.study_uid
              JOIN patients p ON p.id = s.patient_pk
              LEFT JOIN ingest_files first ON first.id = p.first_file_id
             WHERE f.task_id = $1::uuid
             GROUP BY p.id, first.task_id
             ORDER BY count(*) DESC, p.patient_name, p.id LIMIT $2""",
        task_id,
        patients_limit,
    )
    total = int(patients[0]["total"]) if patients else 0
    modalities = await conn.fetch(
        f"""SELECT coalesce(se.modality, '') AS modality, {_BY}
              FROM ingest_files f
              JOIN instances i ON i.sop_instance_uid = f.sop_instance_uid
              JOIN series se ON se.series_uid = i.series_uid
             WHERE f.task_id = $1::uuid
             GROUP BY 1 ORDER BY count(*) DESC, 1""",
        task_id,
    )
    groups = await conn.fetch(
        """SELECT stage, reason, count(*) AS files,
                  min(coalesce(nullif(origin, ''), uri)) AS example
             FROM ingest_files WHERE task_id = $1::uuid AND status = 'failed'
            GROUP BY stage, reason ORDER BY count(*) DESC, reason LIMIT $2""",
        task_id,
        groups_limit,
    )
    return TaskStats(
        patients_total=total,
        patients=[PatientStats(**_without(r, "total")) for r in patients],
        modalities=[ModalityStats(**dict(r)) for r in modalities],
        rates=await _rates(conn, task_id),
        failure_groups=[FailureGroup(**dict(r)) for r in groups],
    )


def _without(row: Any, *names: str) -> dict[str, Any]:
    return {k: v for k, v in dict(row).items() if k not in names}


async def _rates(conn: Conn, task_id: str) -> Rates:
    r = await conn.fetchrow(
        """SELECT extract(epoch FROM coalesce(t.completed_at, now())
                                    - coalesce(t.started_at, t.created_at))::float8 AS elapsed,
                  count(f.id) FILTER (WHERE f.finished_at IS NOT NULL) AS done,
                  coalesce(sum(f.size) FILTER (WHERE f.finished_at IS NOT NULL), 0)::bigint
                      AS bytes,
                  count(f.id) FILTER (WHERE f.finished_at > now() - make_interval(secs => $2))
                      AS recent,
                  count(f.id) FILTER (WHERE f.status = 'pending') AS pending,
                  t.completed_at IS NOT NULL AS ended
             FROM import_tasks t LEFT JOIN ingest_files f ON f.task_id = t.id
            WHERE t.id = $1::uuid GROUP BY t.id""",
        task_id,
        RECENT_SECONDS,
    )
    assert r is not None
    elapsed = max(float(r["elapsed"]), 0.001)
    recent = 0.0 if r["ended"] else r["recent"] / min(RECENT_SECONDS, elapsed)
    return Rates(
        elapsed_seconds=round(elapsed, 3),
        files_done=r["done"],
        bytes_done=r["bytes"],
        files_per_second=round(r["done"] / elapsed, 3),
        bytes_per_second=round(r["bytes"] / elapsed, 1),
        recent_files_per_second=round(recent, 3),
        eta_seconds=round(r["pending"] / recent, 1) if recent > 0 and r["pending"] else None,
    )
