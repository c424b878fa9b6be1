"""Reconciliation: work that PostgreSQL says was discovered but never finished is emitted
again once the pipeline has gone quiet (e.g. the embedded broker restarted and forgot it).

Re-emitting is safe because every stage is idempotent; gating it on an idle pipeline keeps a
long but healthy backlog from being emitted twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from libs.contracts.events import Event
from libs.db.ledger import LedgerRow, discovered_event

Publish = Callable[[Sequence[Event]], Awaitable[None]]


class LedgerPort(Protocol):
    async def seconds_since_last_outcome(self) -> float | None: ...
    async def has_pending_older_than(self, seconds: float) -> bool: ...
    async def take_stale(self, older_than_seconds: float, limit: int) -> list[LedgerRow]: ...
    async def complete_finished_tasks(self) -> int: ...


@dataclass(frozen=True)
class ReconcileReport:
    reemitted: int
    tasks_completed: int
    idle: bool


async def reconcile_once(
    *,
    ledger: LedgerPort,
    publish: Publish,
    idle_seconds: float,
    stale_seconds: float,
    batch_size: int,
) -> ReconcileReport:
    completed = await ledger.complete_finished_tasks()
    since = await ledger.seconds_since_last_outcome()
    idle = since is None or since >= idle_seconds
    reemitted = 0
    if idle and await ledger.has_pending_older_than(stale_seconds):
        while rows := await ledger.take_stale(stale_seconds, batch_size):
            await publish([discovered_event(r) for r in rows])
            reemitted += len(rows)
    return ReconcileReport(reemitted, completed, idle)
