"""Create the declared topics (and their DLQs) if they are missing."""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from libs.contracts.topics import TOPICS, dlq_topic
from libs.kafka.connection import Kafka, client_args
from libs.runtime.logging import get_logger

log = get_logger(__name__)


def admin_client(kafka: Kafka) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_args(kafka))


async def ensure_topics(
    bootstrap_servers: Kafka, *, partitions: int, replication_factor: int
) -> list[str]:
    """Create every declared topic that does not exist yet; returns those created."""
    admin = admin_client(bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted: list[NewTopic] = []
        for spec in TOPICS:
            config = {"retention.ms": str(spec.retention_ms)}
            wanted.append(NewTopic(spec.name, partitions, replication_factor, None, config))
            if spec.dlq:
                # DLQs keep messages until someone replays or discards them.
                wanted.append(
                    NewTopic(
                        dlq_topic(spec.name),
                        1,
                        replication_factor,
                        None,
                        {"retention.ms": "-1"},
                    )
                )
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile elsewhere
                await admin.create_topics(missing)
            log.info("topics created", topics=[t.name for t in missing])
        return [t.name for t in missing]
    finally:
        await admin.close()
