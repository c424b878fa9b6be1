"""Crashes and bad input: nothing lost, nothing stored or indexed twice."""

from __future__ import annotations

import json
import os
import time
from functools import partial

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from trees import build_tree

from load_test.process_stack import Stack
from tests.polling import eventually

# Crash and bad-input tests run on both storage backends, local disk and Google Cloud Storage
# (a GCS emulator process behind the real client), where the backend matters.
BOTH = pytest.mark.parametrize("storage_backend", ["file", "gs"])


async def counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM instances) AS instances,
                  (SELECT coalesce(sum(instance_count), 0) FROM studies) AS counted,
                  (SELECT count(*) FROM conflicts) AS conflicts"""
    )
    assert row is not None
    return row["instances"], row["counted"], row["conflicts"]


async def handled(stack: Stack, stage: str) -> float:
    """The stage's work done: messages handled (every status), the reconciler's rounds."""
    what = "rounds_total" if stage == "reconciler" else "messages_total"
    prefix = f"dicomflow_{stage.replace('-', '_')}_{what}{{"
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{stack.ports[stage]}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


async def handled_more(stack: Stack, stage: str, than: float) -> bool:
    return await handled(stack, stage) > than


async def scanned_at_least(stack: Stack, task_id: str, files: int) -> bool:
    return bool((await stack.task(task_id))["counters"]["files_scanned"] >= files)


@BOTH
async def test_broker_restart_loses_nothing(
    stack: Stack, pool: asyncpg.Pool, broker: object
) -> None:
    tree = stack.root / "imports" / "broker"
    expected = build_tree(tree, patients=3, per_series=60)
    stack.pause("indexer")
    task_id = await stack.start_import(tree)
    await eventually(partial(scanned_at_least, stack, task_id, expected.files), 60)
    broker.restart()  # type: ignore[attr-defined]  # the in-memory broker forgets everything
    stack.resume("indexer")
    task = await stack.wait_task(task_id, timeout=240)
    assert task["status"] == "completed", task
    assert {k: task["counters"][k] for k in expected.counters()} == expected.counters()
    instances, counted, _ = await counts(pool)
    assert instances == counted == expected.new


@BOTH
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

    async def both_letters() -> bool:
        for tp, msgs in (await consumer.getmany(timeout_ms=300)).items():
            for m in msgs:
                letters[tp.topic] = json.loads(m.value)
        return len(letters) == 2

    try:
        await eventually(both_letters, 30, what=lambda: f"dead letters so far: {sorted(letters)}")
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

    async def done() -> bool:
        return await scans_done(stack) >= target

    await eventually(done, timeout, what="the watcher stopped scanning", interval=0.2)


@BOTH
@pytest.mark.stack_env(NAS_WATCH="true")
async def test_watched_folder_is_ingested_once_and_rescans_emit_nothing(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    # Written elsewhere, then renamed into the watched root at once: with NAS_SETTLE_SECONDS
    # at 0 (the stack's), a file a scan met half-written is recorded again once complete (a
    # file rewritten in place is a new version), which is not what this test is about.
    built = stack.root / "nas-build" / "incoming"
    expected = build_tree(built, patients=2, per_series=15, extras=False)
    (stack.root / "nas").mkdir(parents=True, exist_ok=True)
    built.rename(stack.root / "nas" / "incoming")

    async def indexed() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM instances") >= expected.new)

    await eventually(indexed, 90, what=lambda: stack.tail("nas-watcher"), interval=0.2)
    await wait_for_scans(stack, 3)  # three more scans of the unchanged tree
    assert await pool.fetchval("SELECT count(*) FROM ingest_files") == expected.files
    # A file rewritten in place is emitted again, and found to be a duplicate.
    some = next((stack.root / "nas" / "incoming").rglob("*.dcm"))
    some.write_bytes(some.read_bytes())
    os.utime(some, (time.time() - 10, time.time() - 10))
    duplicates = "SELECT count(*) FROM ingest_files WHERE status = 'duplicate'"
    await eventually(lambda: pool.fetchval(duplicates), 30, what=duplicates, interval=0.2)
    assert await pool.fetchval("SELECT count(*) FROM ingest_files") == expected.files + 1
