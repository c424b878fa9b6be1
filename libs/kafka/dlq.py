"""Dead-letter topics for operators: list and show letters, replay them to their topic.

Listing reads a DLQ from the beginning without a consumer group (nothing is committed).
Replaying reads from the position of its own group (`dicomflow-dlq-replay` unless told
otherwise), republishes each selected letter's original payload, key and headers to its
original topic with a `dlq_replay` header naming where it came from, waits for every
acknowledgement, then commits. Letters the filters leave out are passed over for that group;
replay them later with another `group`. A replayed message that fails again becomes a new
letter at the end of the DLQ, after the end captured at the start: no loops.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from libs.contracts.events import DeadLetter
from libs.contracts.topics import dlq_topic
from libs.kafka.connection import Kafka, client_args
from libs.kafka.producer import Producer

REPLAY_GROUP = "dicomflow-dlq-replay"
REPLAY_HEADER = "dlq_replay"


def as_dlq(topic: str) -> str:
    """`dicom.extracted.v1` or `dicom.extracted.v1.dlq` -> the DLQ's name."""
    return topic if topic.endswith(".dlq") else dlq_topic(topic)


@dataclass(frozen=True)
class Letter:
    partition: int
    offset: int
    letter: DeadLetter | None  # None: not a DeadLetter (written by something else)
    raw: bytes

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True)
class LetterFilter:
    stage: str | None = None
    error_type: str | None = None
    correlation_id: str | None = None
    pattern: str | None = None  # regular expression searched in the error text
    since: datetime | None = None

    def matches(self, item: Letter) -> bool:
        d = item.letter
        if d is None:
            return not any(vars(self).values())
        return (
            (self.stage is None or d.stage == self.stage)
            and (self.error_type is None or d.error_type == self.error_type)
            and (self.correlation_id is None or d.correlation_id == self.correlation_id)
            and (self.pattern is None or re.search(self.pattern, d.error) is not None)
            and (self.since is None or d.failed_at >= self.since)
        )


def _letter(record: ConsumerRecord) -> Letter:
    try:
        letter: DeadLetter | None = DeadLetter.model_validate_json(record.value or b"")
    except ValidationError:
        letter = None
    return Letter(record.partition, record.offset, letter, record.value or b"")


async def _read(
    consumer: AIOKafkaConsumer, topic: str, *, start_at_group: bool
) -> list[ConsumerRecord]:
    """Every record from the start (or the group's position) to the end as of now."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise LookupError(f"no such topic: {topic}")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    for tp in tps:
        committed = await consumer.committed(tp) if start_at_group else None
        if committed is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, committed)
    records: list[ConsumerRecord] = []
    remaining = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=1000)
        for tp, rs in batch.items():
            records += [r for r in rs if r.offset < ends[tp]]
            if rs and rs[-1].offset + 1 >= ends[tp]:
                remaining.discard(tp)
        for tp in list(remaining):
            if await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
    return records


async def list_letters(
    bootstrap_servers: Kafka, topic: str, flt: LetterFilter | None = None, limit: int | None = None
) -> list[Letter]:
    flt = flt or LetterFilter()
    consumer = AIOKafkaConsumer(
        **client_args(bootstrap_servers), group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        records = await _read(consumer, as_dlq(topic), start_at_group=False)
    finally:
        await consumer.stop()
    letters = [item for item in map(_letter, records) if flt.matches(item)]
    return letters[:limit] if limit is not None else letters


async def show_letter(bootstrap_servers: Kafka, topic: str, partition: int, offset: int) -> Letter:
    for item in await list_letters(bootstrap_servers, topic):
        if (item.partition, item.offset) == (partition, offset):
            return item
    raise LookupError(f"no letter at {as_dlq(topic)} {partition}:{offset}")


def replay_headers(item: Letter, dlq: str) -> list[tuple[str, bytes]]:
    assert item.letter is not None
    headers = [(k, v.encode()) for k, v in item.letter.headers.items() if k != REPLAY_HEADER]
    return [*headers, (REPLAY_HEADER, f"{dlq}/{item.position}".encode())]


@dataclass(frozen=True)
class ReplayReport:
    replayed: list[Letter]
    passed_over: int
    unreadable: int


async def replay(
    bootstrap_servers: Kafka,
    topic: str,
    producer: Producer,
    flt: LetterFilter | None = None,
    *,
    group_id: str = REPLAY_GROUP,
    dry_run: bool = False,
) -> ReplayReport:
    """Republish the selected letters to their original topics, then commit the group."""
    flt = flt or LetterFilter()
    dlq = as_dlq(topic)
    consumer = AIOKafkaConsumer(
        **client_args(bootstrap_servers), group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        records = await _read(consumer, dlq, start_at_group=True)
        letters = [_letter(r) for r in records]
        chosen = [i for i in letters if i.letter is not None and flt.matches(i)]
        if dry_run:
            return ReplayReport(chosen, len(letters) - len(chosen), _unreadable(letters))
        futures = []
        for item in chosen:
            assert item.letter is not None
            futures.append(
                await producer.send_raw(
                    item.letter.original_topic,
                    item.letter.payload.encode(),
                    item.letter.key.encode() if item.letter.key is not None else None,
                    replay_headers(item, dlq),
                )
            )
        for future in futures:
            await future
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for r in records:
            offsets[TopicPartition(dlq, r.partition)] = OffsetAndMetadata(r.offset + 1, "")
        if offsets:
            await consumer.commit(offsets)
        return ReplayReport(chosen, len(letters) - len(chosen), _unreadable(letters))
    finally:
        await consumer.stop()


def _unreadable(letters: Sequence[Letter]) -> int:
    return sum(1 for i in letters if i.letter is None)
