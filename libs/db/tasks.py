"""Import tasks: created by the API, scanned under a lease by a watcher, completed by the
ledger when every file they found has reached a final outcome."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from libs.db import Conn

FAILED_REASONS_SHOWN = 100


@dataclass(frozen=True)
class TaskCounters:
    files_scanned: int = 0
    pending: int = 0
    new_instances: int = 0
    flagged_same_content: int = 0
    header_revisions: int = 0  # of new_instances: header corrections of indexed instances
    duplicates: int = 0
    conflicts: int = 0
    failed: int = 0
    cancelled: int = 0
    patients_found: int = 0
    patients_new: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Task:
    id: str
    kind: str
    source_path: str
    description: str
    status: str
    error: str | None
    scan_completed: bool
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    paused_at: datetime | None = None
    cancelled_at: datetime | None = None


COLUMNS = (
    "id::text, kind, source_path, description, status, error, scan_completed, created_by,"
    " created_at, started_at, completed_at, updated_at, paused_at, cancelled_at"
)
# Statuses a task does not leave.
ENDED = ("completed", "failed", "cancelled")


async def create_task(
    conn: Conn,
    *,
    source_path: str,
    description: str = "",
    created_by: str | None = None,
    kind: str = "folder",
) -> Task:
    row = await conn.fetchrow(
        f"""INSERT INTO import_tasks (id, kind, source_path, description, created_by)
            VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}""",
        uuid.uuid4(),
        kind,
        source_path,
        description,
        created_by,
    )
    assert row is not None
    return Task(**dict(row))


async def get_task(conn: Conn, task_id: str) -> Task | None:
    try:
        uuid.UUID(task_id)
    except ValueError:
        return None
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM import_tasks WHERE id = $1", task_id)
    return Task(**dict(row)) if row else None


async def list_tasks(
    conn: Conn, *, limit: int = 50, offset: int = 0, status: str | None = None
) -> list[Task]:
    rows = await conn.fetch(
        f"""SELECT {COLUMNS} FROM import_tasks
             WHERE ($3::text IS NULL OR status = $3)
             ORDER BY created_at DESC LIMIT $1 OFFSET $2""",
        limit,
        offset,
        status,
    )
    return [Task(**dict(r)) for r in rows]


async def task_counters(conn: Conn, task_id: str) -> TaskCounters:
    return (await counters_for(conn, [task_id]))[task_id]


async def counters_for(conn: Conn, task_ids: list[str]) -> dict[str, TaskCounters]:
    """Counters of many tasks in three queries (a listing page must not cost three per
    task). Patients found: those of the studies its files belong to; new: those whose first
    file in the index is one of the task's."""
    rows = await conn.fetch(
        """SELECT task_id::text AS task_id, status,
                  reason = 'same_content_other_uid' AS flagged,
                  reason = 'revision' AS revision, count(*) AS n
             FROM ingest_files WHERE task_id = ANY($1::uuid[]) GROUP BY 1, 2, 3, 4""",
        task_ids,
    )
    failures = await conn.fetch(
        """SELECT task_id, uri, origin, stage, reason FROM (
               SELECT task_id::text AS task_id, uri, origin, stage, reason,
                      row_number() OVER (PARTITION BY task_id ORDER BY id) AS n
                 FROM ingest_files WHERE task_id = ANY($1::uuid[]) AND status = 'failed') f
            WHERE n <= $2 ORDER BY task_id, n""",
        task_ids,
        FAILED_REASONS_SHOWN,
    )
    patients = await conn.fetch(
        """SELECT t.id::text AS task_id,
                  (SELECT count(DISTINCT s.patient_pk) FROM ingest_files f
                     JOIN studies s ON s.study_uid = f.study_uid
                    WHERE f.task_id = t.id AND f.study_uid IS NOT NULL) AS found,
                  (SELECT count(*) FROM ingest_files f JOIN patients p ON p.first_file_id = f.id
                    WHERE f.task_id = t.id) AS new
             FROM unnest($1::uuid[]) AS t(id)""",
        task_ids,
    )
    people = {r["task_id"]: (int(r["found"]), int(r["new"])) for r in patients}
    by: dict[str, dict[str, int]] = {t: {} for t in task_ids}
    flagged: dict[str, int] = dict.fromkeys(task_ids, 0)
    revisions: dict[str, int] = dict.fromkeys(task_ids, 0)
    for r in rows:
        counts = by[r["task_id"]]
        counts[r["status"]] = counts.get(r["status"], 0) + r["n"]
        if r["status"] == "indexed" and r["flagged"]:
            flagged[r["task_id"]] += r["n"]
        if r["status"] == "indexed" and r["revision"]:
            revisions[r["task_id"]] += r["n"]
    failed: dict[str, list[dict[str, Any]]] = {t: [] for t in task_ids}
    for r in failures:
        failed[r["task_id"]].append({k: r[k] for k in ("uri", "origin", "stage", "reason")})
    return {
        t: TaskCounters(
            files_scanned=sum(c.values()),
            pending=c.get("pending", 0),
            new_instances=c.get("indexed", 0),
            flagged_same_content=flagged[t],
            header_revisions=revisions[t],
            duplicates=c.get("duplicate", 0),
            conflicts=c.get("conflict", 0),
            failed=c.get("failed", 0),
            cancelled=c.get("cancelled", 0),
            patients_found=people.get(t, (0, 0))[0],
            patients_new=people.get(t, (0, 0))[1],
            failures=failed[t],
        )
        for t, c in by.items()
    }


async def lease_next_scan(
    conn: Conn, *, owner: str, lease_seconds: float, kinds: tuple[str, ...] = ("folder",)
) -> Task | None:
    """Take the oldest task of one of `kinds` whose scan is not finished and not leased by a
    live scanner (a folder scanner must never take an ISO watcher's disc tasks)."""
    row = await conn.fetchrow(
        f"""UPDATE import_tasks
               SET status = 'running', lease_owner = $1,
                   lease_until = now() + make_interval(secs => $2),
                   started_at = coalesce(started_at, now()), updated_at = now()
             WHERE id = (SELECT id FROM import_tasks
                          WHERE NOT scan_completed AND status IN ('pending', 'running')
                            AND kind = ANY($3::text[])
                            AND (lease_until IS NULL OR lease_until < now())
                          ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING {COLUMNS}""",
        owner,
        lease_seconds,
        list(kinds),
    )
    return Task(**dict(row)) if row else None


async def renew_lease(conn: Conn, task_id: str, *, owner: str, lease_seconds: float) -> bool:
    """False once the lease is lost: taken over, or the task paused or cancelled (both clear
    the lease), so the scanner stops."""
    return bool(
        await conn.fetchval(
            """UPDATE import_tasks SET lease_until = now() + make_interval(secs => $3)
                WHERE id = $1 AND lease_owner = $2 AND status = 'running' RETURNING true""",
            task_id,
            owner,
            lease_seconds,
        )
    )


async def start_task(conn: Conn, task_id: str) -> None:
    """A task its creator scans at once (no lease: one scanner per source, by other means)."""
    await conn.execute(
        """UPDATE import_tasks SET status = 'running', started_at = coalesce(started_at, now()),
                  updated_at = now() WHERE id = $1 AND status = 'pending'""",
        task_id,
    )


async def finish_scan(conn: Conn, task_id: str) -> None:
    await conn.execute(
        """UPDATE import_tasks SET scan_completed = true, lease_owner = NULL, lease_until = NULL,
                  updated_at = now() WHERE id = $1""",
        task_id,
    )


async def fail_task(conn: Conn, task_id: str, error: str) -> None:
    await conn.execute(
        """UPDATE import_tasks SET status = 'failed', error = $2, scan_completed = true,
                  lease_owner = NULL, lease_until = NULL, completed_at = now(), updated_at = now()
            WHERE id = $1 AND status NOT IN ('cancelling', 'cancelled')""",
        task_id,
        error,
    )


async def running_task_ids(conn: Conn) -> list[str]:
    rows = await conn.fetch(
        """SELECT id::text FROM import_tasks
            WHERE status IN ('running', 'cancelling') AND scan_completed"""
    )
    return [r["id"] for r in rows]


async def count_by_status(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM import_tasks GROUP BY status")
    return {r["status"]: int(r["n"]) for r in rows}
