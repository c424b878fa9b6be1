"""Periodic rounds (`Runtime.every`): the loop every service used to write by hand, and some
services' rounds called with fakes."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client import CollectorRegistry, Counter

from libs.dicom_net.errors import DicomNetError
from libs.runtime.periodic import AT_ONCE, After, meanwhile, periodically
from services.dcm4chee_watcher.rounds import RoundReport, WatchMetrics, watch_round
from services.pacs_watcher.config import Pacs, WatcherSettings
from services.pacs_watcher.poller import PacsWatch
from tests.polling import eventually


class Lock:
    def __init__(self, free: bool) -> None:
        self.free = free
        self.attempts = 0

    @asynccontextmanager
    async def held(self) -> AsyncIterator[bool]:
        self.attempts += 1
        yield self.free


async def test_rounds_run_at_once_then_every_interval_and_stop_with_the_service() -> None:
    stopping, started, rounds = asyncio.Event(), time.monotonic(), []

    async def fn() -> None:
        rounds.append(time.monotonic() - started)

    task = asyncio.create_task(periodically(stopping, "r", 0.2, fn))
    await eventually(lambda: len(rounds) >= 3, 10, interval=0.005)
    stopping.set()
    await asyncio.wait_for(task, 10)
    assert rounds[0] < 0.15  # the first round does not wait
    assert all(b - a >= 0.19 for a, b in itertools.pairwise(rounds))


async def test_wait_first_waits_one_interval_before_the_first_round() -> None:
    stopping, started, rounds = asyncio.Event(), time.monotonic(), []

    async def fn() -> None:
        rounds.append(time.monotonic() - started)

    task = asyncio.create_task(periodically(stopping, "r", 0.05, fn, wait_first=True))
    await eventually(lambda: len(rounds) >= 3, 10, interval=0.005)
    stopping.set()
    await asyncio.wait_for(task, 10)
    assert rounds[0] >= 0.045


async def test_a_failed_round_is_logged_and_the_next_one_runs() -> None:
    stopping, rounds = asyncio.Event(), []

    async def fn() -> None:
        rounds.append(time.monotonic())
        raise RuntimeError("database away")

    task = asyncio.create_task(periodically(stopping, "r", 0.01, fn))
    await eventually(lambda: len(rounds) >= 3, 10, interval=0.005)
    stopping.set()
    await asyncio.wait_for(task, 10)
    assert task.exception() is None


async def test_a_round_chooses_its_next_wait() -> None:
    stopping, rounds = asyncio.Event(), []

    async def fn() -> After:
        rounds.append(time.monotonic())
        return AT_ONCE if len(rounds) < 3 else After(60)

    task = asyncio.create_task(periodically(stopping, "r", 60, fn))
    # An interval of 60 s: only AT_ONCE gets to three rounds within the timeout.
    await eventually(lambda: len(rounds) >= 3, 10, interval=0.005)
    stopping.set()
    await asyncio.wait_for(task, 10)
    assert len(rounds) == 3


@pytest.mark.parametrize("free", [True, False])
async def test_a_single_reader_round_runs_only_while_it_holds_the_lock(free: bool) -> None:
    stopping, lock, ran = asyncio.Event(), Lock(free), []

    async def fn() -> None:
        ran.append(1)

    task = asyncio.create_task(periodically(stopping, "r", 0.01, fn, single_reader=lock))
    await eventually(lambda: lock.attempts >= 3, 10, interval=0.005)
    stopping.set()
    await asyncio.wait_for(task, 10)
    assert len(ran) == (lock.attempts if free else 0)


async def test_meanwhile_runs_a_round_during_the_block_and_stops_after() -> None:
    renewals: list[float] = []

    async def renew() -> None:
        renewals.append(time.monotonic())

    async with meanwhile("lease", 0.02, renew):
        await eventually(lambda: len(renewals) >= 2, 10, interval=0.005)
    after = len(renewals)
    await asyncio.sleep(0.06)
    assert len(renewals) == after


def metrics() -> WatchMetrics:
    registry = CollectorRegistry()
    return WatchMetrics(
        rounds=Counter("rounds", "", ["outcome"], registry=registry),
        studies=Counter("studies", "", ["mode"], registry=registry),
        unreachable=Counter("unreachable", "", registry=registry),
    )


def value(counter: Counter, *labels: str) -> float:
    return (counter.labels(*labels) if labels else counter)._value.get()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("studies", "expected"), [(5, AT_ONCE), (4, None), (0, None)])
async def test_archive_round_goes_on_at_once_after_a_full_batch(
    studies: int, expected: After | None
) -> None:
    m = metrics()

    async def one_round() -> RoundReport:
        return RoundReport(studies=studies, unreachable=1)

    assert await watch_round(one_round, Lock(True), m, "full", batch_size=5) == expected
    assert value(m.rounds, "ok") == 1
    assert value(m.studies, "full") == studies
    assert value(m.unreachable) == (1 if studies else 0)


async def test_archive_round_without_the_lock_reads_nothing_and_counts_ok() -> None:
    m, calls = metrics(), []

    async def one_round() -> RoundReport:
        calls.append(1)
        return RoundReport(studies=5)

    assert await watch_round(one_round, Lock(False), m, "full", batch_size=5) is None
    assert calls == []
    assert value(m.rounds, "ok") == 1


async def test_a_failed_archive_round_is_counted_and_raised() -> None:
    m = metrics()

    async def one_round() -> RoundReport:
        raise OSError("archive away")

    with pytest.raises(OSError, match="archive away"):
        await watch_round(one_round, Lock(True), m, "metadata", batch_size=5)
    assert value(m.rounds, "failed") == 1
    assert value(m.rounds, "ok") == 0


async def test_pacs_poll_round_backs_off_while_the_pacs_is_away_and_resets_after() -> None:
    registry = CollectorRegistry()
    polls = Counter("polls", "", ["pacs", "outcome"], registry=registry)
    instances = Counter("instances", "", ["pacs"], registry=registry)
    settings = WatcherSettings(poll_interval_seconds=10, max_backoff_seconds=35)
    pacs = Pacs(name="main", ae_title="MAIN", host="127.0.0.1", port=104)
    watch = PacsWatch(pacs, settings, None, None, {"polls": polls, "instances": instances})  # type: ignore[arg-type]
    outcomes = iter([DicomNetError("refused"), OSError("reset"), OSError("reset"), None])

    async def poll_once() -> int:
        error = next(outcomes)
        if error is not None:
            raise error
        return 0

    watch.poll_once = poll_once  # type: ignore[method-assign]
    waits = [(await watch.poll_round()).seconds for _ in range(4)]
    assert waits == [20, 35, 35, 10]  # doubled, capped, back to the interval once it answers
    assert value(polls, "main", "failed") == 3
    assert value(polls, "main", "ok") == 1
