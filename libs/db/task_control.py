"""Pausing, resuming and cancelling an import task, and the gate its queued files pass.

A task's status is the switch; everything that acts on a task reads it:
- the scanner renews its lease at every batch, and pausing or cancelling clears the lease,
  so the scan stops at its next batch (a resumed task is leased again and its scan resumes,
  skipping the files already recorded);
- the extractor, the first stage of every discovered file, asks `gate()` about the tasks
  of its batch: a file of a paused task is set aside (`held_at`, still pending), one of a
  cancelled task ends `cancelled`; files already past the extractor reach their outcome;
- resuming emits the set-aside files again; cancelling a paused task ends them `cancelled`;
- the other sources (ISO discs, PACS retrieves, dcm4chee C-MOVEs) ask `stopped()` before each
  batch they emit and before each long step, and stop there; what they left is done when the
  task is resumed (a cancelled task stops for good).
Each change takes the task row `FOR UPDATE`, like the gate, so none is lost between them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from libs.db import Conn, ledger, tasks
from libs.db.ledger import LedgerRow

CANCELLED_REASON = "import cancelled before the file was read"
GATE_STAGE = "extractor"


# A source may emit files of a task in these statuses only.
EMITTING = ("pending", "running")
LEASE_LOST = "lease lost"


class NotAllowed(Exception):
    """The task's status does not allow this change (e.g. resuming a completed task)."""


class Stopped(Exception):
    """The task was paused, cancelled or ended (or its lease lost): its source stops here;
    a resumed task is taken up again where it stopped."""

    def __init__(self, task_id: str, why: str) -> None:
        super().__init__(f"import {task_id} {why}")
        self.task_id = task_id
        self.why = why


async def stopped(
    conn: Conn, task_ids: Collection[str], *, owner: str | None = None, lock: bool = False
) -> dict[str, str]:
    """Of `task_ids`, the tasks whose source must stop emitting now, with why: their status
    (paused, cancelling, cancelled, completed, failed), `lease lost` when `owner` is given
    and no longer holds the lease, `gone` when there is no such task. Empty: go on. One
    indexed read. With `lock` (inside a transaction) the rows are share-locked until it
    ends: a pause or cancel, which locks them `FOR UPDATE`, commits after what is recorded
    with them, never in between."""
    ids = sorted(set(task_ids))
    if not ids:
        return {}
    rows = await conn.fetch(
        f"""SELECT id::text AS id, status, lease_owner FROM import_tasks
             WHERE id = ANY($1::uuid[]) ORDER BY id{" FOR SHARE" if lock else ""}""",
        ids,
    )
    found = {r["id"]: r for r in rows}
    why: dict[str, str] = {}
    for task_id in ids:
        row = found.get(task_id)
        if row is None:
            why[task_id] = "gone"
        elif row["status"] not in EMITTING:
            why[task_id] = str(row["status"])
        elif owner is not None and row["lease_owner"] != owner:
            why[task_id] = LEASE_LOST
    return why


async def go_on(conn: Conn, task_id: str, *, owner: str | None = None, lock: bool = False) -> None:
    """Raises `Stopped` unless the task's source may emit now (see `stopped`)."""
    why = await stopped(conn, [task_id], owner=owner, lock=lock)
    if why:
        raise Stopped(task_id, why[task_id])


async def _locked_status(conn: Conn, task_id: str) -> str | None:
    status = await conn.fetchval(
        "SELECT status FROM import_tasks WHERE id = $1 FOR UPDATE", task_id
    )
    return None if status is None else str(status)


async def pause(conn: Conn, task_id: str) -> tasks.Task | None:
    """pending/running -> paused (a paused task stays paused). None: no such task."""
    async with conn.transaction():
        status = await _locked_status(conn, task_id)
        if status is None:
            return None
        if status in ("pending", "running"):
            await conn.execute(
                """UPDATE import_tasks SET status = 'paused', paused_at = now(),
                          lease_owner = NULL, lease_until = NULL, updated_at = now()
                    WHERE id = $1""",
                task_id,
            )
        elif status != "paused":
            raise NotAllowed(f"a {status} import cannot be paused")
        return await tasks.get_task(conn, task_id)


async def resume(conn: Conn, task_id: str) -> tuple[tasks.Task, bool] | None:
    """paused -> running (pending if it never started); completes it if nothing is left.
    Returns the task and whether files were set aside (then `take_held` them and emit)."""
    async with conn.transaction():
        status = await _locked_status(conn, task_id)
        if status is None:
            return None
        if status in ("pending", "running"):
            task = await tasks.get_task(conn, task_id)
            assert task is not None
            return task, False
        if status != "paused":
            raise NotAllowed(f"a {status} import cannot be resumed")
        await conn.execute(
            """UPDATE import_tasks
                  SET status = CASE WHEN started_at IS NULL THEN 'pending' ELSE 'running' END,
                      paused_at = NULL, updated_at = now()
                WHERE id = $1""",
            task_id,
        )
        await ledger.complete_task_if_done(conn, task_id)
        held = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM ingest_files WHERE task_id = $1 AND held_at IS NOT NULL"
            " AND status = 'pending')",
            task_id,
        )
        task = await tasks.get_task(conn, task_id)
        assert task is not None
        return task, bool(held)


async def take_held(conn: Conn, task_id: str, limit: int) -> list[LedgerRow]:
    """Up to `limit` set-aside files of a task no longer paused, released for emission (the
    caller publishes them; were it to fail, the reconciler re-emits them as stale)."""
    rows = await conn.fetch(
        """UPDATE ingest_files SET held_at = NULL, emitted = emitted + 1, updated_at = now()
            WHERE id IN (SELECT f.id FROM ingest_files f
                           JOIN import_tasks t ON t.id = f.task_id AND t.status <> 'paused'
                          WHERE f.task_id = $1 AND f.held_at IS NOT NULL
                            AND f.status = 'pending'
                          ORDER BY f.id LIMIT $2 FOR UPDATE OF f SKIP LOCKED)
        RETURNING id, source, uri, origin, size, correlation_id, task_id::text""",
        task_id,
        limit,
    )
    return [LedgerRow(**dict(r)) for r in rows]


async def cancel(conn: Conn, task_id: str) -> tasks.Task | None:
    """pending/running/paused -> cancelling: the scan stops, files set aside end cancelled,
    and the task ends `cancelled` once what was emitted has reached an outcome."""
    async with conn.transaction():
        status = await _locked_status(conn, task_id)
        if status is None:
            return None
        if status in ("pending", "running", "paused"):
            await conn.execute(
                """UPDATE import_tasks
                      SET status = 'cancelling', cancelled_at = now(), scan_completed = true,
                          lease_owner = NULL, lease_until = NULL, updated_at = now()
                    WHERE id = $1""",
                task_id,
            )
            await conn.execute(
                """UPDATE ingest_files
                      SET status = 'cancelled', stage = $2, reason = $3, held_at = NULL,
                          updated_at = now(), finished_at = now()
                    WHERE task_id = $1 AND held_at IS NOT NULL AND status = 'pending'""",
                task_id,
                GATE_STAGE,
                CANCELLED_REASON,
            )
            await ledger.complete_task_if_done(conn, task_id)
        elif status not in ("cancelling", "cancelled"):
            raise NotAllowed(f"a {status} import cannot be cancelled")
        return await tasks.get_task(conn, task_id)


@dataclass(frozen=True)
class Gated:
    """Files the gate stopped: set aside (task paused) or ended (task cancelled)."""

    held: frozenset[int]
    cancelled: frozenset[int]

    def stopped(self, file_id: int) -> bool:
        return file_id in self.held or file_id in self.cancelled


NOTHING_GATED = Gated(frozenset(), frozenset())


async def gate(conn: Conn, files: Sequence[tuple[int, str]]) -> Gated:
    """`files`: (file id, task id) of a batch's files that belong to a task. One read when
    none of their tasks is paused or cancelling (the usual case); otherwise, under the task
    rows' locks, holds or cancels their files."""
    task_ids = sorted({t for _, t in files})
    if not task_ids:
        return NOTHING_GATED
    stopping = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM import_tasks WHERE id = ANY($1::uuid[])
                           AND status IN ('paused', 'cancelling', 'cancelled'))""",
        task_ids,
    )
    if not stopping:
        return NOTHING_GATED
    async with conn.transaction():
        rows = await conn.fetch(
            """SELECT id::text AS id, status FROM import_tasks WHERE id = ANY($1::uuid[])
                ORDER BY id FOR UPDATE""",
            task_ids,
        )
        status = {r["id"]: r["status"] for r in rows}
        hold = [f for f, t in files if status.get(t) == "paused"]
        stop = [f for f, t in files if status.get(t) in ("cancelling", "cancelled")]
        await conn.execute(
            """UPDATE ingest_files SET held_at = now(), updated_at = now()
                WHERE id = ANY($1::bigint[]) AND status = 'pending'""",
            hold,
        )
        await conn.execute(
            """UPDATE ingest_files
                  SET status = 'cancelled', stage = $2, reason = $3, updated_at = now(),
                      finished_at = now()
                WHERE id = ANY($1::bigint[]) AND status = 'pending'""",
            stop,
            GATE_STAGE,
            CANCELLED_REASON,
        )
        for task_id, st in status.items():
            if st == "cancelling":
                await ledger.complete_task_if_done(conn, task_id)
    # A redelivered file that already reached an outcome is stopped too: it keeps that one.
    return Gated(frozenset(hold), frozenset(stop))
