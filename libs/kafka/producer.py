"""The producer every stage shares: acks=all, idempotence where the broker allows it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner, murmur2

from libs.contracts.events import Event
from libs.kafka.connection import Kafka, client_args
from libs.runtime.logging import get_logger
from libs.runtime.metrics import ProducerMetrics

log = get_logger(__name__)


def event_headers(event: Event) -> list[tuple[str, bytes]]:
    return [
        ("correlation_id", event.correlation_id.encode()),
        ("event_type", type(event).__name__.encode()),
        ("schema_version", str(event.schema_version).encode()),
        ("event_id", event.event_id.encode()),
    ]


@functools.lru_cache(maxsize=16384)
def _key_hash(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


def partition_of(key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
    """Kafka's default mapping of a key to a partition (murmur2, as the Java client), with
    the hash remembered: aiokafka computes murmur2 in pure Python, ~30 us a message, and a
    study's thousands of instances all carry the same key. Same partitions as before, so
    a study's events stay ordered across an upgrade."""
    if key is None:
        return int(DefaultPartitioner()(key, list(all_partitions), list(available)))
    return all_partitions[_key_hash(key) % len(all_partitions)]


class Producer:
    def __init__(
        self,
        bootstrap_servers: Kafka,
        *,
        idempotence: bool,
        metrics: ProducerMetrics,
        client_id: str,
        linger_ms: int = 5,
    ) -> None:
        self._metrics = metrics
        if not idempotence:
            log.info(
                "kafka idempotent producer off",
                reason="KAFKA_ENABLE_IDEMPOTENCE=false (the embedded Tansu broker refuses it)",
            )
        self._producer = AIOKafkaProducer(
            **client_args(bootstrap_servers),
            client_id=client_id,
            acks="all",
            enable_idempotence=idempotence,
            linger_ms=linger_ms,
            max_batch_size=256 * 1024,
            partitioner=partition_of,
            request_timeout_ms=30_000,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, event: Event) -> asyncio.Future[object]:
        """Queue an event; the returned future resolves when the broker acknowledged it."""
        return await self.send_raw(
            type(event).TOPIC, event.model_dump_json().encode(), event.key(), event_headers(event)
        )

    async def send_raw(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> asyncio.Future[object]:
        fut = await self._producer.send(topic, value=value, key=key, headers=list(headers))
        self._metrics.produced.labels(topic).inc()
        return fut  # type: ignore[no-any-return]

    async def publish(self, *events: Event) -> None:
        """Send and wait for every acknowledgement."""
        await self.publish_all(events)

    async def publish_all(self, events: Iterable[Event]) -> None:
        """Send a sequence and wait for every acknowledgement (the `publish` port of a
        handler or a round)."""
        futures = [await self.send(e) for e in events]
        if futures:
            await asyncio.gather(*futures)
