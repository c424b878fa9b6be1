"""Consumer metrics on a real broker: every series exists from the start, and the lag of a
partition that moved to another replica is no longer reported by the one that lost it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from libs.contracts.events import Event, ImportRequested
from libs.kafka.admin import ensure_topics
from libs.kafka.consumer import RetryPolicy, Route, StageConsumer
from libs.kafka.producer import Producer
from libs.runtime.metrics import ConsumerMetrics, ProducerMetrics

pytestmark = pytest.mark.integration
TOPIC = ImportRequested.TOPIC


async def ignore(event: ImportRequested) -> Sequence[Event]:
    return []


def lag_partitions(registry: CollectorRegistry) -> set[str]:
    return {
        s.labels["partition"]
        for metric in registry.collect()
        if metric.name == "dicomflow_t_consumer_lag"
        for s in metric.samples
    }


async def replica(
    bootstrap: str, producer: Producer, stopping: asyncio.Event
) -> tuple[StageConsumer, CollectorRegistry, asyncio.Task[None]]:
    registry = CollectorRegistry()
    consumer = StageConsumer(
        stage="t",
        group_id="replicas",
        routes={TOPIC: Route(ImportRequested, ignore)},
        bootstrap_servers=bootstrap,
        producer=producer,
        metrics=ConsumerMetrics.create("t", registry),
        stopping=stopping,
        retry=RetryPolicy(),
        session_timeout_ms=3000,
    )
    await consumer.start()
    return consumer, registry, asyncio.create_task(consumer.run())


async def until(check: object, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def test_lag_series_follow_the_partitions_a_replica_owns(broker: object) -> None:
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    await ensure_topics(bootstrap, partitions=2, replication_factor=1)
    producer = Producer(
        bootstrap,
        idempotence=False,
        metrics=ProducerMetrics.create("p", CollectorRegistry()),
        client_id="p",
    )
    await producer.start()
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    a, reg_a, task_a = await replica(bootstrap, producer, stop_a)
    try:
        assert (
            reg_a.get_sample_value("dicomflow_t_messages_total", {"topic": TOPIC, "status": "dlq"})
            == 0
        ), "exported at zero before the first message"
        await until(lambda: lag_partitions(reg_a) == {"0", "1"}, "first replica owns both")

        b, reg_b, task_b = await replica(bootstrap, producer, stop_b)
        await until(
            lambda: len(lag_partitions(reg_a)) == 1 and len(lag_partitions(reg_b)) == 1,
            "each replica reports only the partition it owns",
        )
        assert lag_partitions(reg_a) | lag_partitions(reg_b) == {"0", "1"}
        stop_b.set()
        await task_b
        await b.stop()
    finally:
        stop_a.set()
        await task_a
        await a.stop()
        await producer.stop()
