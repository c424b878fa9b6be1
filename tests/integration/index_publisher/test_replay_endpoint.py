"""The publisher's ops endpoint replays `dicom.metadata.v1.dlq` (real broker, real database):
only for an ops/admin key, audited, filtered, and each letter once."""

from __future__ import annotations

import json
import time

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI

from libs.contracts.events import DeadLetter, StudyMetadata
from libs.contracts.topics import dlq_topic
from libs.db.apikeys import create_key
from libs.http.middleware import AuditMiddleware
from libs.kafka.producer import Producer
from services.index_publisher.replay import replay_router

pytestmark = pytest.mark.integration
TOPIC = StudyMetadata.TOPIC


def letter(study_uid: str, error_type: str) -> bytes:
    payload = json.dumps({"study_uid": study_uid, "revision": 3})
    return (
        DeadLetter(
            original_topic=TOPIC,
            partition=0,
            offset=7,
            key=study_uid,
            payload=payload,
            error=f"central index rejected the study: HTTP 422: {study_uid}",
            error_type=error_type,
            stage="index-publisher",
            attempts=1,
            correlation_id=f"corr-{study_uid}",
        )
        .model_dump_json()
        .encode()
    )


async def republished(bootstrap: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        TOPIC, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[bytes] = []
    deadline = time.monotonic() + 20
    try:
        while len(out) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            out += [r.value for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    return out


async def test_replay_endpoint(broker: object, pool: asyncpg.Pool, producer: Producer) -> None:
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    for uid, kind in [("1.2.1", "ReceiverRejected"), ("1.2.2", "ReceiverGaveUp")]:
        await (await producer.send_raw(dlq_topic(TOPIC), letter(uid, kind), uid.encode(), []))
    async with pool.acquire() as conn:
        _, ops_key = await create_key(conn, "ops", "replay test")
        _, clinician_key = await create_key(conn, "clinician", "replay test")
    app = FastAPI()
    app.include_router(replay_router(pool, bootstrap, producer))
    app.add_middleware(AuditMiddleware, pool=pool)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
        url = "/ops/dlq/replay"
        assert (await client.post(url)).status_code == 401
        denied = await client.post(url, headers={"Authorization": f"Bearer {clinician_key}"})
        assert denied.status_code == 403
        ops = {"Authorization": f"Bearer {ops_key}"}

        dry = await client.post(url, headers=ops, params={"dry_run": "true"})
        assert dry.status_code == 200, dry.text
        assert dry.json() == {
            "dry_run": True,
            "replayed": ["0:0", "0:1"],
            "passed_over": 0,
            "unreadable": 0,
        }
        only = await client.post(url, headers=ops, params={"error_type": "ReceiverRejected"})
        assert only.json()["replayed"] == ["0:0"]
        assert only.json()["passed_over"] == 1
        again = await client.post(url, headers=ops)  # each letter is offered once
        assert again.json()["replayed"] == []

    values = await republished(bootstrap, 1)
    assert [json.loads(v)["study_uid"] for v in values] == ["1.2.1"]
    async with pool.acquire() as conn:
        actions = await conn.fetch(
            "SELECT status_code FROM audit_log WHERE action = 'dlq.replay' ORDER BY id"
        )
    assert [r["status_code"] for r in actions] == [401, 403, 200, 200, 200]
