"""dcm4chee watcher: the instances it fetches by C-MOVE, and the link from each moved copy to
the ledger row its round recorded.

The round's ledger row of an instance whose file cannot be read stays pending (URI
`dcm4chee://...`, never emitted) while the instance is `retrieving`. The copy the archive
sends arrives through our receiver with a ledger row of its own, outside any task; once that
copy has an outcome (the instance is in the index, or its copy failed or conflicted), the same
outcome is written on the round's row, once (`mark_outcomes(..., pending_only=True)`), so the
round's task counts each instance exactly once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from libs.db import Conn
from libs.db.ledger import Outcome, mark_outcomes

STAGE = "dcm4chee-watcher"


@dataclass(frozen=True)
class Awaiting:
    """An instance to fetch, with its round's ledger row."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    series_size: int
    study_size: int
    file_id: int
    task_id: str
    correlation_id: str
    attempts: int
    reason: str  # why its file could not be read here


async def due(conn: Conn, source: str, *, studies: int) -> list[Awaiting]:
    """The instances to fetch of up to `studies` studies (waited for longest first), of
    running tasks (a paused task's wait), ordered by study and series."""
    rows = await conn.fetch(
        """
        WITH ready AS (
            SELECT d.* FROM dcm4chee_instances d
              JOIN ingest_files f ON f.id = d.file_id
              JOIN import_tasks t ON t.id = f.task_id
             WHERE d.source = $1 AND d.status = 'retrieving' AND d.next_attempt_at <= now()
               AND t.status = 'running'
        ), picked AS (
            SELECT study_uid FROM ready GROUP BY study_uid
             ORDER BY min(next_attempt_at), study_uid LIMIT $2
        )
        SELECT r.sop_instance_uid, r.study_uid, coalesce(r.series_uid, '') AS series_uid,
               coalesce(r.series_size, 0) AS series_size, coalesce(r.study_size, 0) AS study_size,
               r.file_id, f.task_id::text AS task_id, f.correlation_id, r.attempts,
               coalesce(r.reason, '') AS reason
          FROM ready r JOIN ingest_files f ON f.id = r.file_id
         WHERE r.study_uid IN (SELECT study_uid FROM picked)
         ORDER BY r.study_uid, r.series_uid, r.sop_instance_uid
        """,
        source,
        studies,
    )
    return [Awaiting(**dict(r)) for r in rows]


async def start(conn: Conn, source: str, sop_uids: Sequence[str]) -> None:
    """A C-MOVE is about to be asked for: copies indexed from now on are the moved ones (the
    first request's time is kept, so a copy sent by an interrupted attempt still counts)."""
    await conn.execute(
        """UPDATE dcm4chee_instances SET moved_at = coalesce(moved_at, now())
            WHERE source = $1 AND sop_instance_uid = ANY($2::text[])""",
        source,
        list(sop_uids),
    )


async def moved(conn: Conn, source: str, sop_uids: Sequence[str]) -> None:
    """The archive answered the C-MOVE: now wait for the copies' outcomes."""
    await conn.execute(
        """UPDATE dcm4chee_instances SET status = 'moved', last_error = NULL
            WHERE source = $1 AND sop_instance_uid = ANY($2::text[]) AND status = 'retrieving'""",
        source,
        list(sop_uids),
    )


async def defer(
    conn: Conn, source: str, sop_uids: Sequence[str], *, error: str, delay: float, count: bool
) -> None:
    """Try again after `delay` seconds; `count`: this attempt counts towards the limit (an
    archive that is away is waited for without counting)."""
    await conn.execute(
        """UPDATE dcm4chee_instances
              SET attempts = attempts + $3::int, last_error = $4,
                  next_attempt_at = now() + make_interval(secs => $5)
            WHERE source = $1 AND sop_instance_uid = ANY($2::text[]) AND status = 'retrieving'""",
        source,
        list(sop_uids),
        1 if count else 0,
        error,
        delay,
    )


async def fail(conn: Conn, source: str, failures: Sequence[tuple[str, str]]) -> int:
    """(SOP Instance UID, reason): not fetched. The instance is unreachable again (tried anew
    when its study changes) and its round's ledger row fails with the reason. Returns the
    rows failed."""
    async with conn.transaction():
        rows = await conn.fetch(
            """UPDATE dcm4chee_instances d
                  SET status = 'unreachable', reason = u.reason, last_error = u.reason
                 FROM unnest($2::text[], $3::text[]) AS u(sop, reason)
                WHERE d.source = $1 AND d.sop_instance_uid = u.sop
                  AND d.status IN ('retrieving', 'moved')
            RETURNING d.file_id, d.sop_instance_uid, d.study_uid, u.reason,
                      (SELECT task_id::text FROM ingest_files WHERE id = d.file_id) AS task_id""",
            source,
            [sop for sop, _ in failures],
            [reason for _, reason in failures],
        )
        outcomes = [
            Outcome(
                r["file_id"],
                "failed",
                r["reason"],
                r["sop_instance_uid"],
                r["study_uid"],
                r["task_id"],
            )
            for r in rows
        ]
        if outcomes:
            await mark_outcomes(conn, outcomes, stage=STAGE, pending_only=True)
    return len(outcomes)


async def cancel_stopped(conn: Conn, source: str) -> int:
    """Instances still to fetch whose task was cancelled end `cancelled` (nothing is asked
    of the archive for them); they are unreachable again. Returns how many."""
    async with conn.transaction():
        rows = await conn.fetch(
            """UPDATE dcm4chee_instances d SET status = 'unreachable', reason = 'import cancelled'
                 FROM ingest_files f JOIN import_tasks t ON t.id = f.task_id
                WHERE d.source = $1 AND d.status = 'retrieving' AND f.id = d.file_id
                  AND t.status IN ('cancelling', 'cancelled')
            RETURNING d.file_id, d.sop_instance_uid, d.study_uid, f.task_id::text AS task_id""",
            source,
        )
        outcomes = [
            Outcome(
                r["file_id"], "cancelled", None, r["sop_instance_uid"], r["study_uid"], r["task_id"]
            )
            for r in rows
        ]
        if outcomes:
            await mark_outcomes(conn, outcomes, stage=STAGE, pending_only=True)
    return len(outcomes)


async def link(conn: Conn, source: str, *, timeout_seconds: float) -> Counter[str]:
    """Moved instances whose copy reached an outcome get it on their round's ledger row:
    the copy failed or conflicted (a ledger row of that instance finished so since the
    C-MOVE was asked for) → the same, with its reason; the instance is in the index →
    `indexed` when it entered it since the C-MOVE, `duplicate` when it was there before.
    One without either after `timeout_seconds` fails (the archive said it sent it, nothing
    came). Returns the outcomes written, by status."""
    async with conn.transaction():
        rows = await conn.fetch(
            """
            WITH m AS (
                SELECT d.sop_instance_uid, d.study_uid, d.file_id, d.moved_at,
                       f.task_id::text AS task_id
                  FROM dcm4chee_instances d JOIN ingest_files f ON f.id = d.file_id
                 WHERE d.source = $1 AND d.status = 'moved'
                 FOR UPDATE OF d SKIP LOCKED
            )
            SELECT m.*, bad.status AS bad_status, bad.stage AS bad_stage,
                   bad.reason AS bad_reason, i.indexed_at IS NOT NULL AS in_index,
                   coalesce(i.indexed_at >= m.moved_at, false) AS new_in_index,
                   m.moved_at < now() - make_interval(secs => $2) AS expired
              FROM m
              LEFT JOIN LATERAL (
                   SELECT x.status, x.stage, x.reason FROM ingest_files x
                    WHERE x.sop_instance_uid = m.sop_instance_uid
                      AND x.status IN ('failed', 'conflict') AND x.id <> m.file_id
                      AND x.finished_at >= m.moved_at
                    ORDER BY x.finished_at LIMIT 1) bad ON true
              LEFT JOIN instances i ON i.sop_instance_uid = m.sop_instance_uid
            """,
            source,
            timeout_seconds,
        )
        outcomes: list[Outcome] = []
        states: list[tuple[str, str]] = []  # (SOP Instance UID, its new status)
        for r in rows:
            status, reason, state = _linked(dict(r), timeout_seconds)
            if status is None:
                continue
            sop = r["sop_instance_uid"]
            outcomes.append(
                Outcome(r["file_id"], status, reason, sop, r["study_uid"], r["task_id"])
            )
            states.append((sop, state))
        if outcomes:
            await mark_outcomes(conn, outcomes, stage=STAGE, pending_only=True)
            await conn.execute(
                """UPDATE dcm4chee_instances d SET status = u.status,
                          reason = CASE WHEN u.status = 'unreachable' THEN $4 ELSE d.reason END
                     FROM unnest($2::text[], $3::text[]) AS u(sop, status)
                    WHERE d.source = $1 AND d.sop_instance_uid = u.sop""",
                source,
                [sop for sop, _ in states],
                [state for _, state in states],
                never_came(timeout_seconds),
            )
    return Counter(o.status for o in outcomes)


def never_came(timeout_seconds: float) -> str:
    return (
        f"the archive answered the C-MOVE but no copy of this instance reached the index "
        f"within {timeout_seconds:.0f} s (DCM4CHEE_MOVE_LINK_TIMEOUT_SECONDS)"
    )


def _linked(row: dict[str, Any], timeout_seconds: float) -> tuple[str | None, str | None, str]:
    """(ledger outcome, reason, the instance's new status); no outcome yet: (None, None, "")."""
    if row["bad_status"] is not None:
        why = f"the copy fetched by C-MOVE: {row['bad_status']} at {row['bad_stage']}"
        reason = f"{why}: {row['bad_reason']}" if row["bad_reason"] else why
        return str(row["bad_status"]), reason, "retrieved"
    if row["in_index"]:
        return ("indexed" if row["new_in_index"] else "duplicate"), None, "retrieved"
    if row["expired"]:  # unreachable again: tried anew when its study changes
        return "failed", never_came(timeout_seconds), "unreachable"
    return None, None, ""
