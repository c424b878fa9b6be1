"""The ingest ledger: every discovered file, until it reaches a final outcome.

Task counters are computed from it, a task completes when none of its files is
pending, and reconciliation re-emits what is pending but lost in transit.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import asyncpg

from libs.db import Conn, tasks

FINAL = ("indexed", "duplicate", "conflict", "failed", "cancelled")
# Ledger rows of instances a source is still fetching (the dcm4chee watcher's C-MOVE): no
# stage can read them, their outcome comes from the fetched copy, so they are never re-emitted.
NOT_YET_FETCHED = "dcm4chee://%"


class _Lookup(enum.Enum):
    TASK = "look the task up in the ledger"


LOOKUP = _Lookup.TASK


@dataclass(frozen=True)
class NewFile:
    source: str
    uri: str
    origin: str
    size: int
    correlation_id: str
    task_id: str | None = None


@dataclass(frozen=True)
class LedgerRow:
    id: int
    source: str
    uri: str
    origin: str
    size: int
    correlation_id: str
    task_id: str | None


async def record_discovered(conn: Conn, files: Sequence[NewFile]) -> list[LedgerRow]:
    """Insert ledger rows; a task's file already recorded (a resumed scan) is skipped."""
    if not files:
        return []
    rows = await conn.fetch(
        """
        INSERT INTO ingest_files (source, uri, origin, size, correlation_id, task_id)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                             $6::uuid[])
        ON CONFLICT (task_id, uri) WHERE task_id IS NOT NULL DO NOTHING
        RETURNING id, source, uri, origin, size, correlation_id, task_id::text
        """,
        [f.source for f in files],
        [f.uri for f in files],
        [f.origin for f in files],
        [f.size for f in files],
        [f.correlation_id for f in files],
        [f.task_id for f in files],
    )
    return [LedgerRow(**dict(r)) for r in rows]


async def mark_outcome(
    conn: Conn,
    file_id: int,
    status: str,
    *,
    stage: str,
    reason: str | None = None,
    sop_instance_uid: str | None = None,
    study_uid: str | None = None,
    task_id: str | _Lookup | None = LOOKUP,
) -> float | None:
    """Record a file's final outcome once (later calls are no-ops), except that a `failed`
    file may still reach another outcome: a dead letter replayed, once its cause is fixed,
    ends as what really happened to it. Completes its task when it was the last pending
    file. Returns the seconds since the file's discovery if this
    call recorded it (the end-to-end latency), None if it was recorded before.

    Pass `task_id` when the caller knows it (events carry it) to save a round trip; inside a
    caller's transaction no savepoint is taken."""
    assert status in FINAL
    own = nullcontext() if conn.is_in_transaction() else conn.transaction()
    async with own:
        if isinstance(task_id, _Lookup):
            task_id = await conn.fetchval(
                "SELECT task_id::text FROM ingest_files WHERE id = $1", file_id
            )
        if task_id is not None:
            # Serialise outcomes per task, so the last one always sees the others committed.
            await conn.execute("SELECT 1 FROM import_tasks WHERE id = $1 FOR UPDATE", task_id)
        done = await conn.fetchval(
            """
            UPDATE ingest_files
               SET status = $2, stage = $3, reason = $4, sop_instance_uid = $5, study_uid = $6,
                   updated_at = now(), finished_at = now()
             WHERE id = $1 AND (status = 'pending' OR (status = 'failed' AND $2 <> 'failed'))
            RETURNING extract(epoch FROM finished_at - discovered_at)::float8
            """,
            file_id,
            status,
            stage,
            reason,
            sop_instance_uid,
            study_uid,
        )
        if task_id is not None:
            await complete_task_if_done(conn, str(task_id))
    return float(done) if done is not None else None


@dataclass(frozen=True)
class Outcome:
    file_id: int
    status: str
    reason: str | None
    sop_instance_uid: str | None
    study_uid: str | None
    task_id: str | None


async def mark_outcomes(
    conn: Conn, outcomes: Sequence[Outcome], *, stage: str, pending_only: bool = False
) -> dict[int, float]:
    """`mark_outcome` for many files in one statement (a file twice: its first outcome),
    with the same rule: a `failed` file may still reach another outcome (a replayed dead
    letter). `pending_only`: only pending files move (a source that writes an outcome on a
    row of its own once, as the dcm4chee watcher's C-MOVE links). Completes each task whose
    last pending file this was. Returns, per file whose outcome this call recorded, the
    seconds since its discovery. Call inside a transaction."""
    assert conn.is_in_transaction()
    first: dict[int, Outcome] = {}
    for o in outcomes:
        assert o.status in FINAL
        first.setdefault(o.file_id, o)
    tasks_ = sorted({o.task_id for o in first.values() if o.task_id is not None})
    if tasks_:
        # Serialise outcomes per task (in one order), so the last one sees the others.
        await conn.execute(
            "SELECT 1 FROM import_tasks WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", tasks_
        )
    ids = sorted(first)
    rows = await conn.fetch(
        """
        UPDATE ingest_files
           SET status = u.status, stage = $6, reason = u.reason, sop_instance_uid = u.sop,
               study_uid = u.study, updated_at = now(), finished_at = now()
          FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])
               AS u(id, status, reason, sop, study)
         WHERE ingest_files.id = u.id
           AND (ingest_files.status = 'pending'
                OR (NOT $7 AND ingest_files.status = 'failed' AND u.status <> 'failed'))
        RETURNING ingest_files.id,
                  extract(epoch FROM ingest_files.finished_at - ingest_files.discovered_at)::float8
                  AS seconds
        """,
        ids,
        [first[i].status for i in ids],
        [first[i].reason for i in ids],
        [first[i].sop_instance_uid for i in ids],
        [first[i].study_uid for i in ids],
        stage,
        pending_only,
    )
    for task_id in tasks_:
        await complete_task_if_done(conn, task_id)
    return {r["id"]: float(r["seconds"]) for r in rows}


async def mark_failed_many(
    conn: Conn, failures: Sequence[tuple[int, str]], *, stage: str, task_id: str
) -> None:
    """`mark_outcome(..., "failed")` for many files of one task in one statement (a source
    that already knows they cannot be read); completes the task when none is left pending."""
    own = nullcontext() if conn.is_in_transaction() else conn.transaction()
    async with own:
        await conn.execute("SELECT 1 FROM import_tasks WHERE id = $1 FOR UPDATE", task_id)
        await conn.execute(
            """UPDATE ingest_files
                  SET status = 'failed', stage = $3, reason = u.reason, updated_at = now(),
                      finished_at = now()
                 FROM unnest($1::bigint[], $2::text[]) AS u(id, reason)
                WHERE ingest_files.id = u.id AND ingest_files.status = 'pending'""",
            [f[0] for f in failures],
            [f[1] for f in failures],
            stage,
        )
        await complete_task_if_done(conn, task_id)


async def complete_task_if_done(conn: Conn, task_id: str) -> bool:
    """A running task whose scan is over and none of whose files is pending completes; a
    cancelling one ends `cancelled` (a paused one waits to be resumed or cancelled)."""
    done = await conn.fetchval(
        """
        UPDATE import_tasks
           SET status = CASE status WHEN 'cancelling' THEN 'cancelled' ELSE 'completed' END,
               completed_at = now(), updated_at = now()
         WHERE id = $1 AND status IN ('running', 'cancelling') AND scan_completed
           AND NOT EXISTS (SELECT 1 FROM ingest_files WHERE task_id = $1 AND status = 'pending')
        RETURNING true
        """,
        task_id,
    )
    return bool(done)


async def finish_task_scan(conn: Conn, task_id: str) -> bool:
    """A task's scan is over: it completes now if none of its files is pending (its files
    may all have finished during the scan, or it found none). Returns True if completed."""
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM import_tasks WHERE id = $1 FOR UPDATE", task_id)
        await tasks.finish_scan(conn, task_id)
        return await complete_task_if_done(conn, task_id)


async def settled_files(pool: asyncpg.Pool, file_ids: Sequence[int]) -> set[int]:
    """Of these ledger rows, the ones whose file already reached an outcome."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id FROM ingest_files WHERE id = ANY($1::bigint[]) AND status <> 'pending'",
            list(file_ids),
        )
    return {r["id"] for r in rows}


async def stale_pending(conn: Conn, *, older_than_seconds: float, limit: int) -> list[LedgerRow]:
    """Pending files not touched for a while, oldest first; marks them re-emitted. Files of
    a paused task wait for it to be resumed (which emits the ones set aside); files still
    being fetched (`NOT_YET_FETCHED`) are not emitted at all."""
    rows = await conn.fetch(
        """
        UPDATE ingest_files SET emitted = emitted + 1, updated_at = now()
         WHERE id IN (SELECT id FROM ingest_files
                       WHERE status = 'pending'
                         AND updated_at < now() - make_interval(secs => $1)
                         AND uri NOT LIKE $3
                         AND (task_id IS NULL OR task_id NOT IN (
                              SELECT id FROM import_tasks WHERE status = 'paused'))
                       ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)
        RETURNING id, source, uri, origin, size, correlation_id, task_id::text
        """,
        older_than_seconds,
        limit,
        NOT_YET_FETCHED,
    )
    return [LedgerRow(**dict(r)) for r in rows]


async def seconds_since_last_outcome(conn: Conn) -> float | None:
    """How long since any file reached an outcome (None: never)."""
    value = await conn.fetchval(
        "SELECT extract(epoch FROM now() - max(finished_at)) FROM ingest_files"
    )
    return None if value is None else float(value)


async def seconds_since_latest_outcome_discovery(conn: Conn) -> float | None:
    """How long ago the file that most recently reached an outcome was discovered (None:
    none has). Files discovered well before it and still pending were overtaken by it."""
    value = await conn.fetchval(
        """SELECT extract(epoch FROM now() - discovered_at) FROM ingest_files
            WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 1"""
    )
    return None if value is None else float(value)
