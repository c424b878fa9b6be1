"""The consumer's linger (`StageConsumer(linger_ms=...)`) with a fake broker whose records
arrive over time: a batch that a poll left short waits for what arrives within the linger;
a whole batch does not wait; a record fetched again (a partition revoked and assigned back)
is not handled twice; a stop request ends the wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from libs.contracts.events import ImportRequested
from libs.kafka.consumer import BatchRoute, Outcome, RetryPolicy, StageConsumer
from libs.runtime.metrics import ConsumerMetrics
from tests.fake_kafka import TOPIC, TP, record
from tests.polling import eventually


class TricklingBroker:
    """One partition; `arrive()` makes records fetchable; getmany waits (up to its
    timeout) for one to arrive, like aiokafka's."""

    def __init__(self) -> None:
        self.fetchable: list[ConsumerRecord[bytes, bytes]] = []
        self.arrived = asyncio.Event()
        self.commits: list[int] = []

    def arrive(self, *offsets: int) -> None:
        self.fetchable += [record(o) for o in offsets]
        self.arrived.set()

    async def getmany(self, timeout_ms: int = 0, max_records: int = 0) -> dict[Any, Any]:
        if not self.fetchable:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout_ms / 1000)
            except TimeoutError:
                return {}
        chunk, self.fetchable = self.fetchable[:max_records], self.fetchable[max_records:]
        return {TP: chunk}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        raise AssertionError("nothing fails here: no replay")

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets[TP])

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def highwater(self, tp: TopicPartition) -> int:
        return 0


class Acks:
    async def send(self, event: object) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class Stage:
    def __init__(self, *, linger_ms: int, batch_size: int = 50) -> None:
        self.broker = TricklingBroker()
        self.stop = asyncio.Event()
        self.batches: list[list[str]] = []
        self.handled_at: list[float] = []

        async def handler(events: Sequence[ImportRequested]) -> list[Outcome]:
            self.batches.append([e.task_id for e in events])
            self.handled_at.append(time.monotonic())
            return [[] for _ in events]

        self.consumer = StageConsumer(
            stage="linger-test",
            group_id="g",
            routes={TOPIC: BatchRoute(ImportRequested, handler)},
            bootstrap_servers="127.0.0.1:1",  # never contacted: the broker is faked
            producer=Acks(),  # type: ignore[arg-type]
            metrics=ConsumerMetrics.create("linger_test", CollectorRegistry()),
            stopping=self.stop,
            retry=RetryPolicy(max_retries=0, backoff_seconds=0.01),
            batch_size=batch_size,
            linger_ms=linger_ms,
        )
        self.consumer._consumer = self.broker

    async def __aenter__(self) -> Stage:
        self.run = asyncio.create_task(self.consumer.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(self.run, 10)

    def handled(self) -> list[str]:
        return [t for batch in self.batches for t in batch]


async def trickle(stage: Stage, count: int) -> None:
    for offset in range(count):
        stage.broker.arrive(offset)
        await asyncio.sleep(0.01)


async def test_records_that_trickle_in_are_handled_as_one_batch() -> None:
    async with Stage(linger_ms=2_000) as stage:
        await trickle(stage, 6)  # within 60 ms, well inside the linger
        await eventually(lambda: len(stage.handled()) == 6, 10, interval=0.01)
    assert stage.batches == [[f"t{i}" for i in range(6)]]
    assert stage.broker.commits == [6]


async def test_without_a_linger_each_poll_is_a_batch() -> None:
    """What the linger saves: the same trickle, handled as it comes."""
    async with Stage(linger_ms=0) as stage:
        await trickle(stage, 6)
        await eventually(lambda: len(stage.handled()) == 6, 10, interval=0.01)
    assert len(stage.batches) > 1, stage.batches
    assert stage.handled() == [f"t{i}" for i in range(6)]


async def test_a_short_batch_waits_no_longer_than_the_linger() -> None:
    async with Stage(linger_ms=300) as stage:
        arrived = time.monotonic()
        stage.broker.arrive(0)
        await eventually(lambda: stage.batches, 10, interval=0.01)
    waited = stage.handled_at[0] - arrived
    assert 0.25 < waited < 5, waited  # the linger, then at once (not the poll's 500 ms more)


async def test_a_whole_batch_does_not_wait() -> None:
    async with Stage(linger_ms=60_000, batch_size=4) as stage:
        stage.broker.arrive(0, 1, 2, 3, 4)
        await eventually(lambda: stage.batches, 10, interval=0.01)
        assert stage.batches == [["t0", "t1", "t2", "t3"]]
        stage.stop.set()  # the fifth record's batch stops lingering at once
        await asyncio.wait_for(stage.run, 5)
    assert stage.handled() == ["t0", "t1", "t2", "t3", "t4"]


async def test_a_record_fetched_again_is_not_handled_twice() -> None:
    """A partition revoked and assigned back meanwhile is fetched again from its committed
    offset: records 0 and 1 come a second time within the same linger."""
    async with Stage(linger_ms=2_000) as stage:
        stage.broker.arrive(0, 1)
        await asyncio.sleep(0.05)
        stage.broker.arrive(0, 1, 2)
        await eventually(lambda: stage.batches, 10, interval=0.01)
    assert stage.batches == [["t0", "t1", "t2"]]
    assert stage.broker.commits == [3]
