"""The router's per-destination queues (migration 0017): one row per (destination, instance).

States: `queued` (due at `next_attempt_at`) -> `sending` (its C-STORE is under way) ->
`sent`, or back to `queued` with a later `next_attempt_at`, or `failed` with the reason.
One sender per destination at a time (an advisory lock around each round), so a `sending`
row seen at the start of a round was left by a sender that died: it is "in doubt".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from libs.db import Conn

_COLUMNS = """destination, sop_instance_uid, study_uid, series_uid, sop_class_uid,
              transfer_syntax_uid, storage_url, rule, correlation_id, attempts, last_error"""


@dataclass(frozen=True)
class Routed:
    """One instance for one destination, as the consumer queues it."""

    destination: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_url: str
    rule: str
    correlation_id: str


@dataclass(frozen=True)
class QueueItem:
    destination: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_url: str
    rule: str
    correlation_id: str
    attempts: int
    last_error: str | None


async def enqueue(conn: Conn, rows: Sequence[Routed]) -> int:
    """Queue each row unless that destination already has that instance (a redelivered
    event, a second stored event of the same instance): how many were new."""
    if not rows:
        return 0
    result = await conn.execute(
        """INSERT INTO route_queue (destination, sop_instance_uid, study_uid, series_uid,
                                    sop_class_uid, transfer_syntax_uid, storage_url, rule,
                                    correlation_id)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                $6::text[], $7::text[], $8::text[], $9::text[])
           ON CONFLICT (destination, sop_instance_uid) DO NOTHING""",
        *(
            [getattr(r, name) for r in rows]
            for name in (
                "destination",
                "sop_instance_uid",
                "study_uid",
                "series_uid",
                "sop_class_uid",
                "transfer_syntax_uid",
                "storage_url",
                "rule",
                "correlation_id",
            )
        ),
    )
    return int(result.split()[-1])


async def in_doubt(conn: Conn, destination: str) -> list[QueueItem]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM route_queue WHERE destination = $1 AND state = 'sending'",
        destination,
    )
    return [QueueItem(**r) for r in rows]


async def due(conn: Conn, destination: str, limit: int) -> list[QueueItem]:
    """The destination's next instances, oldest first."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM route_queue
             WHERE destination = $1 AND state = 'queued' AND next_attempt_at <= now()
             ORDER BY next_attempt_at, enqueued_at LIMIT $2""",
        destination,
        limit,
    )
    return [QueueItem(**r) for r in rows]


async def next_due_in(conn: Conn, destination: str) -> float | None:
    """Seconds until the destination's next queued instance is due (0 if one is); None when
    nothing is queued."""
    value = await conn.fetchval(
        """SELECT greatest(0, extract(epoch FROM min(next_attempt_at) - now()))
             FROM route_queue WHERE destination = $1 AND state = 'queued'""",
        destination,
    )
    return None if value is None else float(value)


async def sending(conn: Conn, destination: str, sop_instance_uid: str) -> None:
    """Recorded before the C-STORE: from here until `sent`, the instance is in doubt."""
    await conn.execute(
        """UPDATE route_queue SET state = 'sending', updated_at = now()
            WHERE destination = $1 AND sop_instance_uid = $2""",
        destination,
        sop_instance_uid,
    )


async def sent(conn: Conn, destination: str, sop_instance_uid: str) -> None:
    await conn.execute(
        """UPDATE route_queue SET state = 'sent', sent_at = now(), updated_at = now(),
                                  last_error = NULL
            WHERE destination = $1 AND sop_instance_uid = $2""",
        destination,
        sop_instance_uid,
    )


async def requeue(
    conn: Conn,
    destination: str,
    sop_instance_uid: str,
    *,
    delay_seconds: float,
    error: str | None,
    attempt: bool,
) -> None:
    """Back to `queued`, due in `delay_seconds`; `attempt` counts it against the instance's
    budget (a failure of this instance, not an outage of the destination)."""
    await conn.execute(
        """UPDATE route_queue
              SET state = 'queued', attempts = attempts + $3::int,
                  next_attempt_at = now() + make_interval(secs => $4),
                  last_error = coalesce($5, last_error), updated_at = now()
            WHERE destination = $1 AND sop_instance_uid = $2""",
        destination,
        sop_instance_uid,
        1 if attempt else 0,
        delay_seconds,
        error,
    )


async def failed(conn: Conn, destination: str, sop_instance_uid: str, error: str) -> None:
    await conn.execute(
        """UPDATE route_queue SET state = 'failed', attempts = attempts + 1,
                                  last_error = $3, updated_at = now()
            WHERE destination = $1 AND sop_instance_uid = $2""",
        destination,
        sop_instance_uid,
        error,
    )


async def depth(conn: Conn) -> dict[tuple[str, str], int]:
    """Rows waiting per (destination, state): queued, sending, failed (sent rows are the
    record, counted by the sender's metrics, not here)."""
    rows = await conn.fetch(
        """SELECT destination, state, count(*) AS n FROM route_queue
            WHERE state IN ('queued', 'sending', 'failed') GROUP BY destination, state"""
    )
    return {(r["destination"], r["state"]): int(r["n"]) for r in rows}


async def retry_failed(conn: Conn, destination: str) -> int:
    """An operator's retry of a destination's failed instances (after fixing the cause)."""
    result = await conn.execute(
        """UPDATE route_queue SET state = 'queued', attempts = 0, next_attempt_at = now(),
                                  updated_at = now()
            WHERE destination = $1 AND state = 'failed'""",
        destination,
    )
    return int(result.split()[-1])
