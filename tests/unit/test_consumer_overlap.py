"""Two batches in flight (`StageConsumer(overlap=2)`) with a fake broker: when the first
batch's events are not acknowledged, the second batch (handled meanwhile) is not committed
either; both are replayed from the first batch's offsets, and the commits that follow are
in order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from prometheus_client import CollectorRegistry

from libs.contracts.events import Event, ImportRequested
from libs.kafka.consumer import BatchRoute, Outcome, RetryPolicy, StageConsumer
from libs.runtime.metrics import ConsumerMetrics
from tests.fake_kafka import TOPIC, TP, record
from tests.polling import eventually


class FakeBroker:
    """getmany/seek/commit of a single partition holding offsets 0..n-1."""

    def __init__(self, n: int, batch: int) -> None:
        self.records = [record(i) for i in range(n)]
        self.position = 0
        self.batch = batch
        self.commits: list[int] = []
        self.seeks: list[int] = []

    async def getmany(self, timeout_ms: int = 0, max_records: int = 0) -> dict[Any, Any]:
        chunk = self.records[self.position : self.position + self.batch]
        if not chunk:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self.position += len(chunk)
        return {TP: chunk}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)
        self.position = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets[TP])

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.records)


class FakeProducer:
    """Acknowledges every event except, the first time, those of t0 and t1 (batch 1)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.failed_once = False

    async def send(self, event: Event) -> asyncio.Future[object]:
        assert isinstance(event, ImportRequested)
        self.sent.append(event.task_id)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if event.task_id in ("t0", "t1") and not self.failed_once:
            if event.task_id == "t1":
                self.failed_once = True
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, future.set_exception, KafkaConnectionError("broker away"))
        else:
            future.set_result(None)
        return future


async def test_a_failed_batch_takes_the_batch_in_flight_after_it_along() -> None:
    broker, producer = FakeBroker(4, batch=2), FakeProducer()
    stop = asyncio.Event()
    handled: list[list[str]] = []

    async def handler(events: Sequence[ImportRequested]) -> list[Outcome]:
        handled.append([e.task_id for e in events])
        return [[e] for e in events]

    consumer = StageConsumer(
        stage="overlap-test",
        group_id="g",
        routes={TOPIC: BatchRoute(ImportRequested, handler)},
        bootstrap_servers="127.0.0.1:1",  # never contacted: the broker is faked below
        producer=producer,  # type: ignore[arg-type]
        metrics=ConsumerMetrics.create("overlap_test", CollectorRegistry()),
        stopping=stop,
        retry=RetryPolicy(max_retries=1, backoff_seconds=0.01),
        batch_size=2,
        overlap=2,
    )
    consumer._consumer = broker
    consumer._sleep = lambda seconds: asyncio.sleep(0)  # type: ignore[method-assign]

    run = asyncio.create_task(consumer.run())
    # Done, or ended early (its error is raised below).
    await eventually(lambda: run.done() or broker.commits[-1:] == [4], 10, interval=0.01)
    stop.set()
    await asyncio.wait_for(run, 10)
    assert handled[:2] == [["t0", "t1"], ["t2", "t3"]], "batch 2 handled while 1 in flight"
    assert broker.seeks == [0], "both replayed from the first batch's first offset"
    assert broker.commits == [2, 4], "nothing committed before the replay, then in order"
    assert producer.sent == ["t0", "t1", "t2", "t3", "t0", "t1", "t2", "t3"]
