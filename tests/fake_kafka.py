"""Records of a fake partition for the consumer's unit tests (`StageConsumer` with its
broker faked): ImportRequested events at the offsets given."""

from __future__ import annotations

from aiokafka import ConsumerRecord, TopicPartition

from libs.contracts.events import ImportRequested

TOPIC = ImportRequested.TOPIC
TP = TopicPartition(TOPIC, 0)


def record(offset: int) -> ConsumerRecord[bytes, bytes]:
    """Task `t<offset>`'s import request at `offset` of partition 0."""
    event = ImportRequested(
        correlation_id=f"c{offset}", source="test", task_id=f"t{offset}", source_path="/x"
    )
    value = event.model_dump_json().encode()
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, None, value, None, 0, len(value), [])
