"""The reconciler's round with fakes: topics declared first, stale files re-emitted (idle:
after `stale_seconds`; under traffic: only once overtaken), every round counted."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import pytest
from prometheus_client import CollectorRegistry, Counter

from libs.contracts.events import Event, FileDiscovered
from libs.db.ledger import LedgerRow
from services.reconciler.rounds import reconcile_round


class FakeLedger:
    """Pending files, each `age` seconds since it was last touched."""

    def __init__(
        self,
        pending: dict[int, float],
        *,
        since_outcome: float | None = None,
        overtaken: float | None = None,
        finished_tasks: int = 0,
    ) -> None:
        self.pending = pending
        self.since_outcome = since_outcome
        self.overtaken = overtaken
        self.finished_tasks = finished_tasks
        self.thresholds: list[float] = []

    async def seconds_since_last_outcome(self) -> float | None:
        return self.since_outcome

    async def seconds_since_latest_outcome_discovery(self) -> float | None:
        return self.overtaken

    async def has_pending_older_than(self, seconds: float) -> bool:
        return any(age > seconds for age in self.pending.values())

    async def take_stale(self, older_than_seconds: float, limit: int) -> list[LedgerRow]:
        """Taking a row touches it (its age starts again), as `ledger.stale_pending` does."""
        self.thresholds.append(older_than_seconds)
        ids = sorted(i for i, age in self.pending.items() if age > older_than_seconds)[:limit]
        for i in ids:
            self.pending[i] = 0.0
        return [LedgerRow(i, "nas", f"file:///nas/{i}.dcm", f"/nas/{i}.dcm", 10, f"c{i}", None)
                for i in ids]  # fmt: skip

    async def complete_finished_tasks(self) -> int:
        done, self.finished_tasks = self.finished_tasks, 0
        return done


class Round:
    def __init__(self, ledger: FakeLedger) -> None:
        self.registry = CollectorRegistry()
        self.ledger = ledger
        self.published: list[Event] = []
        self.calls: list[str] = []
        self.topics_away = False
        self.run = partial(
            reconcile_round, ledger=ledger, publish=self.publish, declare_topics=self.declare,
            idle_seconds=30.0, stale_seconds=60.0, batch_size=2,
            rounds=Counter("rounds", "", ["status"], registry=self.registry),
            reemitted=Counter("reemitted", "", registry=self.registry),
        )  # fmt: skip

    async def declare(self) -> list[str]:
        self.calls.append("declare")
        if self.topics_away:
            raise ConnectionError("broker away")
        return []

    async def publish(self, events: Sequence[Event]) -> None:
        self.calls.append("publish")
        self.published += events

    def count(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def file_ids(self) -> list[int]:
        return [e.file.file_id for e in self.published if isinstance(e, FileDiscovered)]


async def test_an_idle_pipeline_reemits_what_is_stale_in_batches_after_declaring_topics() -> None:
    r = Round(FakeLedger({1: 90.0, 2: 10.0, 3: 61.0, 4: 300.0}, since_outcome=45.0))
    await r.run()
    assert r.calls[0] == "declare" and r.calls.count("publish") == 2  # batches of 2 and 1
    assert sorted(r.file_ids()) == [1, 3, 4]
    assert set(r.ledger.thresholds) == {60.0}
    assert r.count("rounds_total", status="ok") == 1
    assert r.count("reemitted_total") == 3


async def test_under_traffic_only_overtaken_files_are_reemitted() -> None:
    """A file discovered 100 s after the oldest pending one has reached its outcome: pending
    files older than 100 + 60 s were overtaken, a backlog younger than that is left alone."""
    ledger = FakeLedger({1: 150.0, 2: 170.0, 3: 90.0}, since_outcome=1.0, overtaken=100.0)
    r = Round(ledger)
    await r.run()
    assert r.file_ids() == [2]
    assert set(ledger.thresholds) == {160.0}


async def test_under_traffic_with_nothing_overtaken_nothing_is_reemitted() -> None:
    r = Round(FakeLedger({1: 1000.0}, since_outcome=1.0, overtaken=None, finished_tasks=2))
    await r.run()
    assert r.published == [] and r.ledger.thresholds == []
    assert r.ledger.finished_tasks == 0  # finished tasks completed all the same
    assert r.count("rounds_total", status="ok") == 1
    assert r.count("reemitted_total") == 0


async def test_a_failed_round_is_counted_and_raised_and_reemits_nothing() -> None:
    r = Round(FakeLedger({1: 1000.0}, since_outcome=None))
    r.topics_away = True
    with pytest.raises(ConnectionError):  # the runtime logs it; the next round retries
        await r.run()
    assert r.published == [] and r.ledger.pending == {1: 1000.0}
    assert r.count("rounds_total", status="failed") == 1
    assert r.count("rounds_total", status="ok") is None
    r.topics_away = False
    await r.run()
    assert r.file_ids() == [1]
    assert r.count("rounds_total", status="ok") == 1
