"""The bus against a real Kafka-protocol broker: manual commits, retries, DLQ, poison."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from libs.contracts.errors import PermanentError
from libs.contracts.events import DeadLetter, Event, ImportRequested
from libs.contracts.topics import dlq_topic
from libs.kafka.admin import ensure_topics
from libs.kafka.consumer import BatchRoute, Outcome, RetryPolicy, Route, StageConsumer
from libs.kafka.producer import Producer
from libs.runtime.metrics import ConsumerMetrics, ProducerMetrics
from tests.polling import eventually

TOPIC = ImportRequested.TOPIC


def request(n: int) -> ImportRequested:
    return ImportRequested(correlation_id=f"c{n}", source="test", task_id=f"t{n}", source_path="/x")


async def drain(bootstrap: str, topic: str, count: int, timeout: float = 20) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[bytes] = []

    async def enough() -> bool:
        batch = await consumer.getmany(timeout_ms=200)
        out.extend(m.value for ms in batch.values() for m in ms)
        return len(out) >= count

    try:
        await eventually(
            enough, timeout, what=lambda: f"{len(out)} of {count} on {topic}", interval=0
        )
    finally:
        await consumer.stop()
    return out


async def run_stage(
    bootstrap: str,
    handler: object,
    *,
    group: str = "g",
    until: asyncio.Event,
    batch: bool = False,
    batch_size: int = 200,
    overlap: int = 1,
) -> tuple[StageConsumer, Producer, asyncio.Task[None]]:
    registry = CollectorRegistry()
    producer = Producer(
        bootstrap, idempotence=False, metrics=ProducerMetrics.create("t", registry), client_id="t"
    )
    await producer.start()
    consumer = StageConsumer(
        stage="test-stage",
        group_id=group,
        routes={
            TOPIC: (BatchRoute if batch else Route)(ImportRequested, handler)  # type: ignore[arg-type]
        },
        bootstrap_servers=bootstrap,
        producer=producer,
        metrics=ConsumerMetrics.create("t", registry),
        stopping=until,
        retry=RetryPolicy(max_retries=2, backoff_seconds=0.01),
        session_timeout_ms=3000,
        batch_size=batch_size,
        overlap=overlap,
    )
    await consumer.start()
    return consumer, producer, asyncio.create_task(consumer.run())


async def test_retries_then_dead_letters_and_keeps_going(broker: object) -> None:
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    await ensure_topics(bootstrap, partitions=1, replication_factor=1)
    attempts: dict[str, int] = {}
    handled: list[str] = []

    async def handler(event: ImportRequested) -> Sequence[Event]:
        attempts[event.task_id] = attempts.get(event.task_id, 0) + 1
        if event.task_id == "t1":
            raise RuntimeError("boom")
        if event.task_id == "t2":
            raise PermanentError("not a DICOM file")
        handled.append(event.task_id)
        return []

    stop = asyncio.Event()
    consumer, producer, task = await run_stage(bootstrap, handler, until=stop)
    await producer.publish(request(0), request(1), request(2), request(3))
    await producer.send_raw(TOPIC, b"{not json", b"k")
    await producer.publish(request(4))
    letters = [
        DeadLetter.model_validate_json(v) for v in await drain(bootstrap, dlq_topic(TOPIC), 3)
    ]
    stop.set()
    await task
    await consumer.stop()
    await producer.stop()

    assert handled == ["t0", "t3", "t4"]
    assert attempts["t1"] == 3  # first try + max_retries
    assert attempts["t2"] == 1  # permanent: no retry
    by_error = {letter.error_type: letter for letter in letters}
    assert by_error["RuntimeError"].attempts == 3
    assert "boom" in by_error["RuntimeError"].error
    assert by_error["RuntimeError"].correlation_id == "c1"
    assert by_error["PermanentError"].error == "not a DICOM file"
    assert by_error["ValidationError"].payload == "{not json"
    assert all(
        letter.stage == "test-stage" and letter.original_topic == TOPIC for letter in letters
    )


async def test_commits_only_after_the_handler(broker: object) -> None:
    """A message whose handler never finished is delivered again to the next consumer."""
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    await ensure_topics(bootstrap, partitions=1, replication_factor=1)
    started = asyncio.Event()

    async def stuck(event: ImportRequested) -> Sequence[Event]:
        started.set()
        await asyncio.sleep(3600)
        return []

    stop = asyncio.Event()
    consumer, producer, task = await run_stage(bootstrap, stuck, group="g2", until=stop)
    await producer.publish(request(7))
    await asyncio.wait_for(started.wait(), 20)
    task.cancel()  # the process "dies" mid-message: nothing committed
    await consumer.stop()

    seen: list[str] = []
    got = asyncio.Event()

    async def record(event: ImportRequested) -> Sequence[Event]:
        seen.append(event.task_id)
        got.set()
        return []

    stop2 = asyncio.Event()
    consumer2, _, task2 = await run_stage(bootstrap, record, group="g2", until=stop2)
    await asyncio.wait_for(got.wait(), 30)
    stop2.set()
    await task2
    await consumer2.stop()
    await producer.stop()
    assert seen == ["t7"]


async def test_a_poison_message_in_a_batch_is_dead_lettered_alone(broker: object) -> None:
    """A batch handler whose transaction fails as a whole because of one message (as an SQL
    statement over the batch would): the batch is handled again one message at a time; the
    poison one is retried to its limit and dead-lettered, every other message reaches its
    outcome and its event is produced; a message whose own outcome is a PermanentError is
    dead-lettered at once without failing the others."""
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    await ensure_topics(bootstrap, partitions=1, replication_factor=1)
    committed: list[str] = []  # effects of the batches that went through (their "commit")
    batches: list[list[str]] = []

    async def handler(events: Sequence[ImportRequested]) -> list[Outcome]:
        ids = [e.task_id for e in events if e.source != "done"]  # not our own output
        if ids:
            batches.append(ids)
        if "t3" in ids:
            raise RuntimeError("value too long for type character varying")  # rolled back
        committed.extend(i for i in ids if i != "t5")
        return [outcome(e) for e in events]

    def outcome(e: ImportRequested) -> Outcome:
        if e.source == "done":
            return []
        return PermanentError("bad path") if e.task_id == "t5" else [done(e)]

    def done(e: ImportRequested) -> ImportRequested:
        return ImportRequested(
            correlation_id=e.correlation_id, source="done", task_id=e.task_id, source_path="/y"
        )

    stop = asyncio.Event()
    consumer, producer, task = await run_stage(
        bootstrap, handler, group="poison", until=stop, batch=True
    )
    await producer.publish(*(request(n) for n in range(8)))  # one batch: a single fetch
    letters = [
        DeadLetter.model_validate_json(v) for v in await drain(bootstrap, dlq_topic(TOPIC), 2)
    ]
    produced = [
        ImportRequested.model_validate_json(v) for v in await drain(bootstrap, TOPIC, 8 + 6)
    ]
    stop.set()
    await task
    await consumer.stop()
    await producer.stop()

    by_type = {letter.error_type: letter for letter in letters}
    assert sorted(by_type) == ["PermanentError", "RuntimeError"], letters
    assert by_type["RuntimeError"].correlation_id == "c3"
    assert by_type["RuntimeError"].attempts == 3  # first try + max_retries, alone
    assert "value too long" in by_type["RuntimeError"].error
    assert by_type["PermanentError"].correlation_id == "c5"
    assert by_type["PermanentError"].attempts == 1
    outcomes = sorted(e.task_id for e in produced if e.source == "done")
    assert outcomes == ["t0", "t1", "t2", "t4", "t6", "t7"], "every other message, once"
    assert sorted(committed) == outcomes
    assert any("t3" in b and len(b) > 1 for b in batches), f"t3 failed a batch: {batches}"
    assert batches.count(["t3"]) == 3, "then retried alone"


async def test_overlapping_batches_keep_the_order_of_their_events_and_commits(
    broker: object,
) -> None:
    """With overlap=2 the next batch's handler runs while the one before it is still in its
    handler (the storage-writer copies batch N+1 while batch N is flushed): here the first
    batch's handler finishes only once the second one's started, which one batch at a time
    could never do. The events still come out in input order, and every offset is
    committed: a consumer of the same group afterwards gets nothing."""
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    await ensure_topics(bootstrap, partitions=1, replication_factor=1)
    second_started = asyncio.Event()
    calls: list[list[str]] = []

    async def handler(events: Sequence[ImportRequested]) -> list[Outcome]:
        ids = [e.task_id for e in events if e.source != "done"]
        if ids:
            calls.append(ids)
            if len(calls) == 1:
                await asyncio.wait_for(second_started.wait(), 15)  # batch 1 waits for 2
            else:
                second_started.set()
        return [[done(e)] if e.source != "done" else [] for e in events]

    def done(e: ImportRequested) -> ImportRequested:
        return ImportRequested(
            correlation_id=e.correlation_id, source="done", task_id=e.task_id, source_path="/y"
        )

    stop = asyncio.Event()
    registry_producer = Producer(
        bootstrap,
        idempotence=False,
        metrics=ProducerMetrics.create("p", CollectorRegistry()),
        client_id="p",
    )
    await registry_producer.start()
    await registry_producer.publish(*(request(n) for n in range(4)))
    consumer, producer, task = await run_stage(
        bootstrap, handler, group="overlap", until=stop, batch=True, batch_size=2, overlap=2
    )
    produced = [ImportRequested.model_validate_json(v) for v in await drain(bootstrap, TOPIC, 8)]
    assert [e.task_id for e in produced if e.source == "done"] == ["t0", "t1", "t2", "t3"]
    assert calls[:2] == [["t0", "t1"], ["t2", "t3"]]

    async def committed() -> bool:
        offsets = await consumer._consumer.committed(TopicPartition(TOPIC, 0))
        return offsets == 8  # the four requests and the four outcomes, all handled

    await eventually(committed, 20, what="every offset committed")
    stop.set()
    await task
    await consumer.stop()
    await producer.stop()
    await registry_producer.stop()
