"""Reconciliation: work that PostgreSQL says was discovered but never finished is emitted
again (e.g. the embedded broker restarted and forgot it, or a publish failed after the
ledger commit).

Re-emitting is safe because every stage is idempotent, but a long and healthy backlog must
not be emitted twice. So a pending file is stale once untouched for `stale_seconds` while
the pipeline is idle; under traffic, once it has been overtaken: a file discovered
`stale_seconds` after its last emission has already reached its outcome (the stages work in
order, so it would have finished first, had its event not been lost). A steady stream thus
never starves recovery, and a backlog is never re-emitted while it is worked through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter

from libs.contracts.events import Event, discovered_event
from libs.db.ledger import LedgerRow
from libs.runtime.logging import get_logger

log = get_logger(__name__)
Publish = Callable[[Sequence[Event]], Awaitable[None]]


class LedgerPort(Protocol):
    async def seconds_since_last_outcome(self) -> float | None: ...
    async def seconds_since_latest_outcome_discovery(self) -> float | None: ...
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
    threshold: float | None = stale_seconds
    if not idle:  # only what work discovered later has overtaken
        overtaken = await ledger.seconds_since_latest_outcome_discovery()
        threshold = None if overtaken is None else overtaken + stale_seconds
    reemitted = 0
    if threshold is not None and await ledger.has_pending_older_than(threshold):
        while rows := await ledger.take_stale(threshold, batch_size):
            await publish([discovered_event(r) for r in rows])
            reemitted += len(rows)
    return ReconcileReport(reemitted, completed, idle)


async def reconcile_round(
    *,
    ledger: LedgerPort,
    publish: Publish,
    declare_topics: Callable[[], Awaitable[object]],
    idle_seconds: float,
    stale_seconds: float,
    batch_size: int,
    rounds: Counter,
    reemitted: Counter,
) -> None:
    """The periodic round: declare the topics (a restarted in-memory broker has none), then
    `reconcile_once`, counted by outcome. A failure is counted and raised: the runtime logs
    it and the next round retries (keep reconciling through outages)."""
    try:
        await declare_topics()
        report = await reconcile_once(
            ledger=ledger,
            publish=publish,
            idle_seconds=idle_seconds,
            stale_seconds=stale_seconds,
            batch_size=batch_size,
        )
    except Exception:
        rounds.labels("failed").inc()
        raise
    rounds.labels("ok").inc()
    reemitted.inc(report.reemitted)
    if report.reemitted or report.tasks_completed:
        log.info("reconciled", reemitted=report.reemitted, tasks_completed=report.tasks_completed)
