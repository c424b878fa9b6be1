"""Crashes and bad input: nothing lost, nothing stored or indexed twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from trees import build_tree

from load_test.process_stack import PIPELINE, Stack

# Every crash and bad-input test on both storage backends: local disk and Google Cloud
# Storage (a GCS emulator process behind the real client).
pytestmark = pytest.mark.parametrize("storage_backend", ["file", "gs"])


async def counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM instances) AS instances,
                  (SELECT coalesce(sum(instance_count), 0) FROM studies) AS counted,
                  (SELECT count(*) FROM conflicts) AS conflicts"""
    )
    assert row is not None
    return row["instances"], row["counted"], row["conflicts"]


async def test_kill_9_each_stage_mid_import(stack: Stack, pool: asyncpg.Pool) -> None:
    mid_import = 0
    total_new = total_conflicts = 0
    for stage in PIPELINE:
        tree = stack.root / "imports" / f"kill-{stage}"
        expected = build_tree(tree, patients=2, per_series=60)
        total_new += expected.new
        total_conflicts += expected.conflicts
        if stage != "nas-watcher":
            stack.pause(stage)  # let its input pile up
        task_id = await stack.start_import(tree)
        if stage != "nas-watcher":
            deadline = time.monotonic() + 60
            while (await stack.task(task_id))["counters"]["files_scanned"] < expected.files:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            stack.resume(stage)
        await asyncio.sleep(0.3)
        mid_import += (await stack.task(task_id))["status"] != "completed"
        stack.kill(stage, signal.SIGKILL)
        stack.start(stage)
        await stack.wait_ready([stage])
        task = await stack.wait_task(task_id, timeout=180)
        assert task["status"] == "completed", (stage, task)
        got = {k: task["counters"][k] for k in expected.counters()}
        assert got == expected.counters(), f"after killing {stage}"
    assert mid_import >= len(PIPELINE) - 2, "most kills should land while work is in flight"
    instances, counted, conflicts = await counts(pool)
    assert instances == counted == total_new
    assert conflicts == total_conflicts


async def test_broker_restart_loses_nothing(
    stack: Stack, pool: asyncpg.Pool, broker: object
) -> None:
    tree = stack.root / "imports" / "broker"
    expected = build_tree(tree, patients=3, per_series=60)
    stack.pause("indexer")
    task_id = await stack.start_import(tree)
    deadline = time.monotonic() + 60
    while (await stack.task(task_id))["counters"]["files_scanned"] < expected.files:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    broker.restart()  # type: ignore[attr-defined]  # the in-memory broker forgets everything
    stack.resume("indexer")
    task = await stack.wait_task(task_id, timeout=240)
    assert task["status"] == "completed", task
    assert {k: task["counters"][k] for k in expected.counters()} == expected.counters()
    instances, counted, _ = await counts(pool)
    assert instances == counted == expected.new


async def test_poison_messages_are_dead_lettered_and_stages_keep_going(
    stack: Stack, broker: object
) -> None:
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    await producer.send_and_wait("dicom.discovered.v1", b"\x00\xffnot json", key=b"poison")
    await producer.send_and_wait("dicom.extracted.v1", json.dumps({"event_id": 1}).encode())
    await producer.stop()

    tree = stack.root / "imports" / "after-poison"
    expected = build_tree(tree, patients=1, per_series=10, extras=False)
    task = await stack.wait_task(await stack.start_import(tree))
    assert task["status"] == "completed"
    assert task["counters"]["new_instances"] == expected.new

    letters = {}
    consumer = AIOKafkaConsumer(
        "dicom.discovered.v1.dlq",
        "dicom.extracted.v1.dlq",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    deadline = time.monotonic() + 30
    try:
        while len(letters) < 2 and time.monotonic() < deadline:
            for tp, msgs in (await consumer.getmany(timeout_ms=300)).items():
                for m in msgs:
                    letters[tp.topic] = json.loads(m.value)
    finally:
        await consumer.stop()
    assert letters["dicom.discovered.v1.dlq"]["stage"] == "extractor"
    assert "invalid FileDiscovered event" in letters["dicom.discovered.v1.dlq"]["error"]
    assert letters["dicom.extracted.v1.dlq"]["stage"] == "dedup"
    assert letters["dicom.extracted.v1.dlq"]["original_topic"] == "dicom.extracted.v1"


async def scans_done(stack: Stack) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{stack.ports['nas-watcher']}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("dicomflow_nas_watcher_scans_total{")
    )


async def wait_for_scans(stack: Stack, more: int, timeout: float = 30) -> None:
    target = await scans_done(stack) + more
    deadline = time.monotonic() + timeout
    while await scans_done(stack) < target:
        assert time.monotonic() < deadline, "the watcher stopped scanning"
        await asyncio.sleep(0.2)


@pytest.mark.stack_env(NAS_WATCH="true")
async def test_watched_folder_is_ingested_once_and_rescans_emit_nothing(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    expected = build_tree(stack.root / "nas" / "incoming", patients=2, per_series=15, extras=False)
    deadline = time.monotonic() + 90
    while await pool.fetchval("SELECT count(*) FROM instances") < expected.new:
        assert time.monotonic() < deadline, stack.tail("nas-watcher")
        await asyncio.sleep(0.2)
    await wait_for_scans(stack, 3)  # three more scans of the unchanged tree
    assert await pool.fetchval("SELECT count(*) FROM ingest_files") == expected.files
    # A file rewritten in place is emitted again, and found to be a duplicate.
    some = next((stack.root / "nas" / "incoming").rglob("*.dcm"))
    some.write_bytes(some.read_bytes())
    os.utime(some, (time.time() - 10, time.time() - 10))
    deadline = time.monotonic() + 30
    while await pool.fetchval("SELECT count(*) FROM ingest_files WHERE status = 'duplicate'") < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert await pool.fetchval("SELECT count(*) FROM ingest_files") == expected.files + 1
