"""`libs.kafka.dlq` against a real Kafka-protocol broker: letters written by a failing stage
are listed, filtered, shown, and replayed to their topic once per group."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from prometheus_client import CollectorRegistry

from libs.contracts.errors import PermanentError
from libs.contracts.events import Event, ImportRequested
from libs.contracts.topics import dlq_topic
from libs.kafka.consumer import RetryPolicy, Route, StageConsumer
from libs.kafka.dlq import REPLAY_HEADER, LetterFilter, list_letters, replay, show_letter
from libs.kafka.producer import Producer
from libs.runtime.metrics import ConsumerMetrics
from tests.polling import eventually

pytestmark = pytest.mark.integration
TOPIC = ImportRequested.TOPIC


def request(n: int) -> ImportRequested:
    return ImportRequested(
        correlation_id=f"c{n}", source="test", task_id=f"t{n}", source_path=f"/x/{n}"
    )


async def dead_letter(bootstrap: str, producer: Producer, events: list[ImportRequested]) -> None:
    """Run a real stage whose handler rejects paths ending in an even digit, and keeps
    raising on odd ones (dead-lettered after its retries)."""

    async def handler(event: ImportRequested) -> list[Event]:
        if int(event.source_path[-1]) % 2 == 0:
            raise PermanentError(f"bad path {event.source_path}")
        raise RuntimeError("flaky dependency")

    stopping = asyncio.Event()
    stage = StageConsumer(
        stage="checker",
        group_id="stage",
        routes={TOPIC: Route(ImportRequested, handler)},
        bootstrap_servers=bootstrap,
        producer=producer,
        metrics=ConsumerMetrics.create("t", CollectorRegistry()),
        stopping=stopping,
        retry=RetryPolicy(max_retries=1, backoff_seconds=0.01),
        session_timeout_ms=3000,
    )
    await stage.start()
    task = asyncio.create_task(stage.run())
    await producer.publish(*events)

    async def written() -> bool:
        return len(await list_letters(bootstrap, TOPIC)) >= len(events)

    # Joining the group waits for the session timeout.
    await eventually(written, 120, what="letters not written", interval=0.3)
    stopping.set()
    await task
    await stage.stop()


async def read_topic(bootstrap: str, count: int) -> list[ConsumerRecord]:
    consumer = AIOKafkaConsumer(
        TOPIC, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[ConsumerRecord] = []

    async def enough() -> bool:
        batch = await consumer.getmany(timeout_ms=200)
        out.extend(r for rs in batch.values() for r in rs)
        return len(out) >= count

    try:
        await eventually(enough, 20, what=lambda: f"{len(out)} of {count} records", interval=0)
    finally:
        await consumer.stop()
    return out


async def test_list_show_and_replay_once_per_group(broker: object, producer: Producer) -> None:
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    events = [request(n) for n in range(4)]
    await dead_letter(bootstrap, producer, events)

    letters = await list_letters(bootstrap, TOPIC)
    assert sorted(i.letter.correlation_id for i in letters if i.letter) == ["c0", "c1", "c2", "c3"]
    permanent = await list_letters(bootstrap, TOPIC, LetterFilter(error_type="PermanentError"))
    assert sorted(i.letter.correlation_id for i in permanent if i.letter) == ["c0", "c2"]
    flaky = await list_letters(bootstrap, dlq_topic(TOPIC), LetterFilter(pattern="flaky"))
    assert sorted(i.letter.correlation_id for i in flaky if i.letter) == ["c1", "c3"]
    matched = await list_letters(bootstrap, TOPIC, LetterFilter(pattern=r"bad path /x/2$"))
    assert [i.letter.correlation_id for i in matched if i.letter] == ["c2"]
    one = await show_letter(bootstrap, TOPIC, matched[0].partition, matched[0].offset)
    assert one.letter is not None and one.letter.attempts == 1 and one.letter.stage == "checker"

    dry = await replay(bootstrap, TOPIC, producer, LetterFilter(stage="checker"), dry_run=True)
    assert len(dry.replayed) == 4
    report = await replay(bootstrap, TOPIC, producer, LetterFilter(error_type="PermanentError"))
    assert sorted(i.letter.correlation_id for i in report.replayed if i.letter) == ["c0", "c2"]
    assert report.passed_over == 2

    records = await read_topic(bootstrap, len(events) + 2)
    replayed = [r for r in records if REPLAY_HEADER in dict(r.headers)]
    assert len(replayed) == 2
    for r in replayed:
        original = ImportRequested.model_validate_json(r.value)
        assert original == events[int(original.source_path[-1])], "the payload, unchanged"
        headers = dict(r.headers)
        assert headers["correlation_id"] == original.correlation_id.encode()
        assert headers[REPLAY_HEADER].decode().startswith(f"{TOPIC}.dlq/")

    # The group has moved past every letter it read; another group starts from the beginning.
    again = await replay(bootstrap, TOPIC, producer)
    assert again.replayed == [] and again.passed_over == 0
    other = await replay(bootstrap, TOPIC, producer, group_id="other", dry_run=True)
    assert len(other.replayed) == 4

    # The operator's command, as a separate process.
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "libs.tools.cli",
            "dlq",
            "list",
            TOPIC,
            "--error-type",
            "RuntimeError",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    assert len(listed) == 3 and listed[-1].startswith("# 2 letter(s)"), listed
    position = listed[0].split()[0]
    shown = subprocess.run(
        [sys.executable, "-m", "libs.tools.cli", "dlq", "show", TOPIC, position],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    body = json.loads(shown)
    assert body["error_type"] == "RuntimeError" and body["payload"]["task_id"] in {"t1", "t3"}
