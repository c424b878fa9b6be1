"""De-identified export jobs: created by the API, run by one API replica at a time under a
lease (a replica that dies leaves the job to the next one once the lease runs out), with
progress counters and the instances left out (and why)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from libs.db import Conn

OUTCOMES_KEPT = 1000  # excluded/failed instances recorded per job (counters count them all)


@dataclass(frozen=True)
class ExportJob:
    id: str
    study_uids: list[str]
    profile: dict[str, Any]
    status: str
    created_by: str | None
    total: int
    processed: int
    exported: int
    excluded: int
    failed: int
    archive_name: str | None
    archive_size: int | None
    archive_sha256: str | None
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None
    outcomes: list[dict[str, Any]] = field(default_factory=list)


COLUMNS = (
    "id::text, study_uids, profile, status, created_by, total, processed, exported, excluded,"
    " failed, archive_name, archive_size, archive_sha256, error, attempts, created_at,"
    " started_at, updated_at, finished_at, outcomes"
)


def _job(row: Any) -> ExportJob:
    return ExportJob(**dict(row))


async def create(
    conn: Conn, study_uids: list[str], profile: dict[str, Any], created_by: str | None
) -> ExportJob:
    row = await conn.fetchrow(
        f"""INSERT INTO export_jobs (id, study_uids, profile, created_by)
            VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}""",
        uuid.uuid4(),
        study_uids,
        profile,
        created_by,
    )
    return _job(row)


async def get(conn: Conn, job_id: str) -> ExportJob | None:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM export_jobs WHERE id = $1", job_id)
    return _job(row) if row else None


async def lease_next(conn: Conn, owner: str, lease_seconds: float) -> ExportJob | None:
    """The oldest job waiting (or whose runner's lease ran out), now leased to `owner`."""
    row = await conn.fetchrow(
        f"""UPDATE export_jobs SET status = 'running', lease_owner = $1,
                   lease_until = now() + make_interval(secs => $2), attempts = attempts + 1,
                   started_at = coalesce(started_at, now()), updated_at = now(),
                   processed = 0, exported = 0, excluded = 0, failed = 0, outcomes = '[]'
             WHERE id = (SELECT id FROM export_jobs
                          WHERE status IN ('queued', 'running')
                            AND (lease_until IS NULL OR lease_until < now())
                          ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING {COLUMNS}""",
        owner,
        lease_seconds,
    )
    return _job(row) if row else None


async def secret(conn: Conn) -> bytes:
    """The installation's de-identification secret (made by migration 0019)."""
    value = await conn.fetchval("SELECT secret FROM deid_secret WHERE id = 1")
    if not value:
        raise RuntimeError("deid_secret is empty: migration 0019 did not run")
    return bytes.fromhex(value)


@dataclass
class Progress:
    """What a runner reports as it goes; `outcomes` holds the excluded and failed."""

    total: int = 0
    processed: int = 0
    exported: int = 0
    excluded: int = 0
    failed: int = 0
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    missing: int = 0  # of the failed: not in storage (all of them: storage is unreachable)

    def note(self, outcome: dict[str, Any]) -> None:
        if len(self.outcomes) < OUTCOMES_KEPT:
            self.outcomes.append(outcome)


async def report(
    conn: Conn, job_id: str, owner: str, progress: Progress, lease_seconds: float
) -> bool:
    """Save the counters and renew the lease; False when the lease is no longer ours."""
    done = await conn.fetchval(
        """UPDATE export_jobs SET total = $3, processed = $4, exported = $5, excluded = $6,
                  failed = $7, outcomes = $8, updated_at = now(),
                  lease_until = now() + make_interval(secs => $9)
            WHERE id = $1 AND lease_owner = $2 AND status = 'running' RETURNING true""",
        job_id,
        owner,
        progress.total,
        progress.processed,
        progress.exported,
        progress.excluded,
        progress.failed,
        progress.outcomes,
        lease_seconds,
    )
    return bool(done)


async def complete(
    conn: Conn, job_id: str, owner: str, progress: Progress, name: str, size: int, sha256: str
) -> bool:
    done = await conn.fetchval(
        """UPDATE export_jobs SET status = 'completed', total = $3, processed = $4,
                  exported = $5, excluded = $6, failed = $7, outcomes = $8, archive_name = $9,
                  archive_size = $10, archive_sha256 = $11, error = NULL, lease_owner = NULL,
                  lease_until = NULL, updated_at = now(), finished_at = now()
            WHERE id = $1 AND lease_owner = $2 AND status = 'running' RETURNING true""",
        job_id,
        owner,
        progress.total,
        progress.processed,
        progress.exported,
        progress.excluded,
        progress.failed,
        progress.outcomes,
        name,
        size,
        sha256,
    )
    return bool(done)


async def fail(conn: Conn, job_id: str, owner: str, error: str) -> None:
    await conn.execute(
        """UPDATE export_jobs SET status = 'failed', error = $3, lease_owner = NULL,
                  lease_until = NULL, updated_at = now(), finished_at = now()
            WHERE id = $1 AND lease_owner = $2""",
        job_id,
        owner,
        error,
    )


async def release(conn: Conn, job_id: str, owner: str, error: str, *, counts: bool = True) -> None:
    """Give the job back (an outage, a stop): the next round, here or elsewhere, retries it;
    `error` says why (shown while it waits, and in the final error if it never succeeds).
    `counts=False` (a restart): the run is not counted among the job's attempts."""
    await conn.execute(
        """UPDATE export_jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL,
                  error = $3, updated_at = now(),
                  attempts = attempts - CASE WHEN $4 THEN 0 ELSE 1 END
            WHERE id = $1 AND lease_owner = $2 AND status = 'running'""",
        job_id,
        owner,
        error,
        counts,
    )


async def known_studies(conn: Conn, study_uids: list[str]) -> set[str]:
    rows = await conn.fetch(
        "SELECT study_uid FROM studies WHERE study_uid = ANY($1::text[])", study_uids
    )
    return {r["study_uid"] for r in rows}


async def expire(conn: Conn, retention_hours: float) -> list[str]:
    """Completed jobs older than the retention become `expired`; their archives' names."""
    rows = await conn.fetch(
        """UPDATE export_jobs SET status = 'expired', updated_at = now()
            WHERE status = 'completed'
              AND finished_at < now() - make_interval(secs => $1)
        RETURNING archive_name""",
        retention_hours * 3600,
    )
    return [r["archive_name"] for r in rows if r["archive_name"]]
