"""The publisher as a process, between a real broker, PostgreSQL and a central index over
HTTPS: every revision arrives once and in order, outages are ridden out, a study the
receiver refuses lands in the DLQ with the receiver's answer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from libs.contracts.events import DeadLetter, StudyMetadata
from libs.contracts.topics import dlq_topic
from libs.http.delivery import classify
from libs.kafka.admin import ensure_topics
from libs.kafka.producer import Producer
from libs.runtime.metrics import ProducerMetrics
from services.index_publisher.config import IndexPublisherSettings
from services.index_publisher.http_client import CentralIndexClient
from tests.conftest import Broker
from tests.integration.index_publisher.conftest import (
    API_KEY,
    CENTER,
    Central,
    Publisher,
    Rule,
    index_study,
    publisher_env,
)
from tests.integration.test_bus import drain
from tests.polling import eventually

TOPIC = StudyMetadata.TOPIC
DLQ = dlq_topic(TOPIC)


async def dead_letters(bootstrap: str) -> int:
    """How many messages the DLQ holds (its end offsets): nothing to wait for, the publisher
    dead-letters before it commits, and the test reads this after the commits."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer.topics()  # loads the metadata partitions_for_topic reads
        parts = [TopicPartition(DLQ, p) for p in consumer.partitions_for_topic(DLQ) or ()]
        return sum((await consumer.end_offsets(parts)).values()) if parts else 0
    finally:
        await consumer.stop()


async def publish(bootstrap: str, events: list[StudyMetadata]) -> None:
    producer = Producer(
        bootstrap,
        idempotence=False,
        metrics=ProducerMetrics.create("test", CollectorRegistry()),
        client_id="test",
    )
    await producer.start()
    try:
        await producer.publish(*events)
    finally:
        await producer.stop()


async def test_every_revision_arrives_once_and_in_order(
    broker: Broker,
    database_url: str,
    conn: asyncpg.Connection,
    central: Central,
    tls: dict[str, Path],
    publisher: Callable[[dict[str, str]], Publisher],
) -> None:
    studies = {f"1.2.826.0.1.{n}": f"PID{n}" for n in range(4)}
    events = [e for uid, pid in studies.items() for e in await index_study(conn, uid, pid, 3)]
    a, b = list(studies)[:2]
    central.down = Rule(503, {"detail": "warming up"}, times=3)  # the first requests fail
    central.slow[f"dicomflow:{CENTER}:{a}:2"] = 1.5  # applied, answered after the timeout
    await ensure_topics(broker.bootstrap, partitions=3, replication_factor=1)
    await publish(broker.bootstrap, events)
    proc = publisher(publisher_env(database_url, broker.bootstrap, central, tls))
    await proc.wait_ready()

    every = {uid: [1, 2, 3] for uid in studies}
    await eventually(
        lambda: {uid: central.revisions(uid) for uid in studies} == every,
        60,
        what=lambda: f"{ {uid: central.revisions(uid) for uid in studies} }\n{proc.tail()}",
    )
    # Redelivered and stale revisions change nothing; a new revision after them goes out.
    redelivered = [e for e in events if e.study_uid == a and e.revision == 2]
    stale = [e for e in events if e.study_uid == b and e.revision == 1]
    await publish(broker.bootstrap, redelivered + stale)
    newer = await index_study(conn, a, studies[a], 1, start=3)
    newer += await index_study(conn, b, studies[b], 1, start=3)
    await publish(broker.bootstrap, newer)
    await eventually(
        lambda: central.revisions(a) == [1, 2, 3, 4] and central.revisions(b) == [1, 2, 3, 4],
        30,
        what=lambda: f"{central.revisions(a)} {central.revisions(b)}\n{proc.tail()}",
    )

    for uid in studies:
        expected = [1, 2, 3, 4] if uid in (a, b) else [1, 2, 3]
        assert central.revisions(uid) == expected, uid  # once each, in order
    # The slow answer (applied, then too late) was retried with the same key and answered as
    # a duplicate; redelivered and stale revisions were never sent again.
    answered = {
        key: [r.status for r in central.requests if r.key == key and r.status < 500]
        for key in (f"dicomflow:{CENTER}:{a}:2", f"dicomflow:{CENTER}:{b}:1")
    }
    assert list(answered.values()) == [[201, 200], [201]]

    body = central.studies[a]
    row = await conn.fetchrow(
        """SELECT p.study_pk, s.patient_pk FROM index_publications p
             JOIN studies s USING (study_uid) WHERE study_uid = $1""",
        a,
    )
    assert body == {
        "patient_pk": row["patient_pk"],
        "patient_id": studies[a],
        "patient_name": f"DOE^{studies[a]}",
        "study_pk": row["study_pk"],
        "study_iuid": a,
        "study_datetime": "2024-03-01T10:15:30",
        "study_description": "CT CHEST",
        "study_modality": "CT\\SR",
        "study_series": 2,
        "study_instances": 4,
        "center": CENTER,
    }
    expected = {uid: central.revisions(uid)[-1] for uid in studies}

    async def recorded() -> bool:  # committed right after the receiver's answer
        rows = await conn.fetch("SELECT study_uid, delivered_revision FROM index_publications")
        return {r["study_uid"]: r["delivered_revision"] for r in rows} == expected

    await eventually(recorded, 10, what=proc.tail)
    assert await dead_letters(broker.bootstrap) == 0


async def test_an_outage_longer_than_the_retry_budget_is_ridden_out(
    broker: Broker,
    database_url: str,
    conn: asyncpg.Connection,
    central: Central,
    tls: dict[str, Path],
    publisher: Callable[[dict[str, str]], Publisher],
) -> None:
    """Down (503), then refusing our key (401), then slow (timeouts): each for several
    retry budgets. Nothing is dead-lettered, /ready says why, and all arrives afterwards."""
    studies = {f"1.2.826.0.2.{n}": f"PID{n}" for n in range(3)}
    events = [e for uid, pid in studies.items() for e in await index_study(conn, uid, pid, 2)]
    await ensure_topics(broker.bootstrap, partitions=3, replication_factor=1)
    central.down = Rule(503, {"detail": "maintenance"})
    proc = publisher(publisher_env(database_url, broker.bootstrap, central, tls))
    await proc.wait_ready()
    await publish(broker.bootstrap, events)

    async def not_ready_because_of_the_receiver() -> bool:
        ok, body = await proc.ready()
        return not ok and body["checks"]["receiver"] == "failing"

    await eventually(not_ready_because_of_the_receiver, 30, what=proc.tail)
    await eventually(
        lambda: len(central.requests) >= 12, 30, what=proc.tail
    )  # several budgets (4 each)
    central.down = None
    central.api_key = "rotated"  # our key is refused now
    seen = len(central.requests)
    await eventually(lambda: len(central.requests) >= seen + 6, 30, what=proc.tail)
    assert not central.applied
    assert not (await proc.ready())[0]
    central.api_key = "central-secret"
    for uid in studies:  # slow: every first answer comes after the client's timeout
        central.slow[f"dicomflow:{CENTER}:{uid}:1"] = 1.0

    every = {uid: [1, 2] for uid in studies}
    await eventually(
        lambda: {uid: central.revisions(uid) for uid in studies} == every,
        60,
        what=lambda: f"{ {uid: central.revisions(uid) for uid in studies} }\n{proc.tail()}",
    )
    await eventually(proc._ready_or_dead, 30, what=proc.tail)
    assert await dead_letters(broker.bootstrap) == 0
    proc.stop()
    assert proc.proc is not None and proc.proc.returncode == 0, proc.tail()  # graceful SIGTERM


async def test_a_refused_study_lands_in_the_dlq_with_the_answer(
    broker: Broker,
    database_url: str,
    conn: asyncpg.Connection,
    central: Central,
    tls: dict[str, Path],
    publisher: Callable[[dict[str, str]], Publisher],
) -> None:
    """422: dead-lettered at once with the body. 500 for one study while others go through:
    dead-lettered after the budget. 429 with Retry-After: waited for, then delivered."""
    rejected, broken, throttled, fine = (f"1.2.826.0.3.{n}" for n in range(4))
    events = []
    for n, uid in enumerate((rejected, broken, throttled, fine)):
        events += await index_study(conn, uid, f"PID{n}", 1)
    central.rules[rejected] = Rule(422, {"detail": "patient_id PID0 is not valid here"})
    central.rules[broken] = Rule(500, {"detail": "NullPointerException in StudyMapper"})
    central.rules[throttled] = Rule(429, {"detail": "slow down"}, retry_after="1", times=1)
    await ensure_topics(broker.bootstrap, partitions=3, replication_factor=1)
    await publish(broker.bootstrap, events)
    # Budget for the broken study (4 attempts, 0.5 s doubling) outlasts the throttled wait.
    env = publisher_env(database_url, broker.bootstrap, central, tls)
    env.update(INDEX_PUBLISHER_BACKOFF_SECONDS="0.5", INDEX_PUBLISHER_MAX_BACKOFF_SECONDS="2")
    proc = publisher(env)
    await proc.wait_ready()

    letters = [DeadLetter.model_validate_json(v) for v in await drain(broker.bootstrap, DLQ, 2)]
    assert await dead_letters(broker.bootstrap) == 2  # the no-DLQ checks can fail
    await eventually(lambda: central.revisions(throttled) == [1], 30, what=proc.tail)
    assert central.revisions(fine) == [1]
    by_study = {letter.key: letter for letter in letters}
    assert set(by_study) == {rejected, broken}, proc.tail()

    refused = by_study[rejected]
    assert refused.error_type == "ReceiverRejected"
    assert "HTTP 422" in refused.error and "patient_id PID0 is not valid here" in refused.error
    assert refused.stage == "index-publisher" and refused.original_topic == TOPIC
    assert StudyMetadata.model_validate_json(refused.payload).study_uid == rejected
    assert len(central.requests_for(rejected)) == 1  # a 4xx is not retried

    gave_up = by_study[broken]
    assert gave_up.error_type == "ReceiverGaveUp"
    assert "HTTP 500" in gave_up.error and "NullPointerException" in gave_up.error
    assert len(central.requests_for(broken)) == 4

    first, second = central.requests_for(throttled)
    assert (first.status, second.status) == (429, 201)
    assert second.at - first.at >= 0.95  # Retry-After: 1 honoured
    rows = await conn.fetch("SELECT study_uid FROM index_publications WHERE delivered_revision > 0")
    assert {r["study_uid"] for r in rows} == {throttled, fine}


async def test_the_receiver_certificate_is_verified(
    central: Central, tls: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the CA that signed it, the test server's certificate is refused: no answer,
    which the publisher treats as the receiver being unreachable (held, not dead-lettered)."""
    monkeypatch.setenv("INDEX_PUBLISHER_URL", central.url)
    monkeypatch.setenv("INDEX_PUBLISHER_CENTER", CENTER)
    monkeypatch.setenv("INDEX_PUBLISHER_API_KEY", API_KEY)
    untrusted = CentralIndexClient(IndexPublisherSettings())
    monkeypatch.setenv("INDEX_PUBLISHER_CA_BUNDLE", str(tls["ca"]))
    trusted = CentralIndexClient(IndexPublisherSettings())
    body = b'{"study_iuid": "1.2.3"}'
    try:
        refused = await untrusted.post(body, {"Idempotency-Key": "k1"})
        accepted = await trusted.post(body, {"Idempotency-Key": "k1"})
    finally:
        await untrusted.close()
        await trusted.close()
    assert refused.status is None and "CERTIFICATE_VERIFY_FAILED" in refused.body
    assert classify(refused) == "retry"
    assert (accepted.status, central.applied) == (201, ["k1"])
    assert '"status":"stored"' in accepted.body
