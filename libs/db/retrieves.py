"""On-demand retrieves from an upstream PACS (`POST /v1/retrieve`).

A retrieve is an import task of kind `retrieve` (`import_tasks`: the same status, lease,
listing and ledger counters as folder imports, so `GET /v1/imports` shows it too) plus a
`pacs_retrieves` row holding the request and the retry state, and one
`pacs_retrieve_studies` row per study it matched with the sub-operation counts the PACS
reported. A side table rather than new `import_tasks` columns, as the ISO watcher's
`iso_discs` does: import tasks stay one shape for every source.

The API accepts only PACS names the watcher registered in `pacs_peers` (from its
`WATCHER_PACS`), so the names are configured in one place.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from libs.db import Conn, tasks
from libs.dicom_net.requests import RetrieveRequest

KIND = "retrieve"
STUDIES_SHOWN = 100


@dataclass(frozen=True)
class Retrieve:
    task_id: str
    pacs: str
    request: dict[str, Any]
    method: str | None
    found: bool
    attempts: int
    next_attempt_at: datetime
    last_error: str | None


@dataclass(frozen=True)
class StudyRow:
    study_uid: str
    expected: int | None
    status: str  # pending, skipped (already indexed), retrieving, done
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int | None = None


@dataclass(frozen=True)
class Progress:
    """What `GET /v1/retrieve/{id}` shows: studies by state and the PACS's instance counts."""

    studies_matched: int
    studies_skipped: int
    studies_retrieved: int
    instances_expected: int | None
    instances_completed: int
    instances_failed: int
    instances_warning: int
    instances_remaining: int | None
    instances_indexed: int


def progress(studies: Sequence[StudyRow], indexed: Mapping[str, int]) -> Progress:
    """Sums over the studies; `remaining` counts what the PACS still has to send: what it
    last reported for a study in flight, its C-FIND count for one not started (None when the
    PACS did not give one). `indexed` is the index's instance count per study UID."""
    expected = [s.expected for s in studies if s.status != "skipped"]
    remaining: int | None = 0
    for s in studies:
        left = (
            s.remaining
            if s.status == "retrieving" and s.remaining is not None
            else s.expected
            if s.status in ("pending", "retrieving")
            else 0
        )
        remaining = None if left is None or remaining is None else remaining + left
    return Progress(
        studies_matched=len(studies),
        studies_skipped=sum(s.status == "skipped" for s in studies),
        studies_retrieved=sum(s.status == "done" for s in studies),
        instances_expected=None if None in expected else sum(e or 0 for e in expected),
        instances_completed=sum(s.completed for s in studies),
        instances_failed=sum(s.failed for s in studies),
        instances_warning=sum(s.warning for s in studies),
        instances_remaining=remaining,
        instances_indexed=sum(indexed.get(s.study_uid, 0) for s in studies),
    )


# -- the PACS a deployment knows ---------------------------------------------------------


async def register_peers(conn: Conn, peers: Sequence[tuple[str, str, str]]) -> None:
    """(name, AE title, move|get) of each PACS a watcher serves; called at its start."""
    await conn.executemany(
        """INSERT INTO pacs_peers (name, ae_title, retrieve) VALUES ($1, $2, $3)
           ON CONFLICT (name) DO UPDATE SET ae_title = EXCLUDED.ae_title,
               retrieve = EXCLUDED.retrieve, seen_at = now()""",
        peers,
    )


async def known_pacs(conn: Conn) -> list[str]:
    return [r["name"] for r in await conn.fetch("SELECT name FROM pacs_peers ORDER BY name")]


# -- tasks -------------------------------------------------------------------------------

_RETRIEVE = "task_id::text, pacs, request, method, found, attempts, next_attempt_at, last_error"


def _retrieve(row: Any) -> Retrieve:
    fields = dict(row)
    if isinstance(fields["request"], str):
        fields["request"] = json.loads(fields["request"])
    return Retrieve(**fields)


async def create(conn: Conn, request: RetrieveRequest, *, created_by: str | None) -> tasks.Task:
    async with conn.transaction():
        task = await tasks.create_task(
            conn,
            source_path=f"pacs:{request.pacs}",
            description=request.description,
            created_by=created_by,
            kind=KIND,
        )
        await conn.execute(
            "INSERT INTO pacs_retrieves (task_id, pacs, request) VALUES ($1, $2, $3::jsonb)",
            uuid.UUID(task.id),
            request.pacs,
            request.model_dump_json(exclude_none=True),
        )
    return task


async def get(conn: Conn, task_id: str) -> tuple[Retrieve, list[StudyRow]] | None:
    row = await conn.fetchrow(
        f"SELECT {_RETRIEVE} FROM pacs_retrieves WHERE task_id = $1", uuid.UUID(task_id)
    )
    if row is None:
        return None
    return _retrieve(row), await studies(conn, task_id)


async def studies(conn: Conn, task_id: str) -> list[StudyRow]:
    rows = await conn.fetch(
        """SELECT study_uid, expected, status, completed, failed, warning, remaining
             FROM pacs_retrieve_studies WHERE task_id = $1 ORDER BY study_uid""",
        uuid.UUID(task_id),
    )
    return [StudyRow(**dict(r)) for r in rows]


async def lease_next(
    conn: Conn, *, pacs: str, owner: str, lease_seconds: float
) -> tuple[tasks.Task, Retrieve] | None:
    """Take the oldest unfinished retrieve of `pacs` that is due (not waiting out a backoff)
    and not leased by a live watcher; `FOR UPDATE SKIP LOCKED`, like `lease_next_scan`."""
    async with conn.transaction():
        task = await conn.fetchrow(
            f"""UPDATE import_tasks
                   SET status = 'running', lease_owner = $1,
                       lease_until = now() + make_interval(secs => $2),
                       started_at = coalesce(started_at, now()), updated_at = now()
                 WHERE id = (SELECT t.id FROM import_tasks t
                               JOIN pacs_retrieves r ON r.task_id = t.id
                              WHERE t.kind = '{KIND}' AND NOT t.scan_completed
                                AND t.status IN ('pending', 'running') AND r.pacs = $3
                                AND r.next_attempt_at <= now()
                                AND (t.lease_until IS NULL OR t.lease_until < now())
                              ORDER BY t.created_at LIMIT 1 FOR UPDATE OF t SKIP LOCKED)
             RETURNING {tasks.COLUMNS}""",
            owner,
            lease_seconds,
            pacs,
        )
        if task is None:
            return None
        row = await conn.fetchrow(
            f"SELECT {_RETRIEVE} FROM pacs_retrieves WHERE task_id = $1", task["id"]
        )
    return tasks.Task(**dict(task)), _retrieve(row)


async def set_studies(conn: Conn, task_id: str, method: str, rows: Sequence[StudyRow]) -> None:
    """The C-FIND's answer: what to retrieve and what the index already holds."""
    async with conn.transaction():
        await conn.executemany(
            """INSERT INTO pacs_retrieve_studies (task_id, study_uid, expected, status)
               VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
            [(uuid.UUID(task_id), r.study_uid, r.expected, r.status) for r in rows],
        )
        await conn.execute(
            "UPDATE pacs_retrieves SET found = true, method = $2 WHERE task_id = $1",
            uuid.UUID(task_id),
            method,
        )


async def update_study(conn: Conn, task_id: str, row: StudyRow) -> None:
    await conn.execute(
        """UPDATE pacs_retrieve_studies
              SET status = $3, completed = $4, failed = $5, warning = $6, remaining = $7,
                  updated_at = now()
            WHERE task_id = $1 AND study_uid = $2""",
        uuid.UUID(task_id),
        row.study_uid,
        row.status,
        row.completed,
        row.failed,
        row.warning,
        row.remaining,
    )


async def defer(
    conn: Conn, task_id: str, *, error: str, delay_seconds: float, count: bool = True
) -> int:
    """Release the lease and try again after `delay_seconds`; returns the failed attempts."""
    async with conn.transaction():
        await conn.execute(
            """UPDATE import_tasks SET lease_owner = NULL, lease_until = NULL, updated_at = now()
                WHERE id = $1""",
            uuid.UUID(task_id),
        )
        attempts = await conn.fetchval(
            """UPDATE pacs_retrieves
                  SET attempts = attempts + $2::int, last_error = $3,
                      next_attempt_at = now() + make_interval(secs => $4)
                WHERE task_id = $1 RETURNING attempts""",
            uuid.UUID(task_id),
            1 if count else 0,
            error,
            delay_seconds,
        )
    return int(attempts)


async def note_failure(conn: Conn, task_id: str, error: str, *, attempts: int) -> None:
    """The last attempt's error and the failed attempts, the last one included."""
    await conn.execute(
        "UPDATE pacs_retrieves SET last_error = $2, attempts = $3 WHERE task_id = $1",
        uuid.UUID(task_id),
        error,
        attempts,
    )
