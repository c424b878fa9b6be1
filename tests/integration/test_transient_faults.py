"""Transient faults never become permanent failures: a PostgreSQL restart holds the stage
(not ready) and retries without limit, without using up the attempts a poison message gets;
a full disk is held and retried the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from libs.contracts.events import Event, ImportRequested, InstanceUnique
from libs.db.pool import create_pool
from libs.kafka.consumer import RetryPolicy, Route, StageConsumer
from libs.kafka.dlq import list_letters
from libs.kafka.producer import Producer
from libs.runtime.metrics import ConsumerMetrics
from libs.storage.local import LocalStore
from services.storage_writer.handlers import handle_unique, storage_key
from tests.instances import unique_events
from tests.polling import eventually
from tests.private_servers import Cluster, private_cluster, small_filesystem

pytestmark = pytest.mark.integration
TOPIC = ImportRequested.TOPIC


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with private_cluster() as c:
        yield c


def request(n: int) -> ImportRequested:
    return ImportRequested(correlation_id=f"c{n}", source="t", task_id=f"t{n}", source_path="/x")


def stage_of(
    bootstrap: str, producer: Producer, topic: str, route: Route[Any], stopping: asyncio.Event
) -> StageConsumer:
    return StageConsumer(
        stage="indexer",
        group_id="stage",
        routes={topic: route},
        bootstrap_servers=bootstrap,
        producer=producer,
        metrics=ConsumerMetrics.create("t", CollectorRegistry()),
        stopping=stopping,
        retry=RetryPolicy(max_retries=3, backoff_seconds=0.05),
        concurrency=4,
        session_timeout_ms=3000,
    )


async def test_postgres_restarts_are_held_and_retried_never_dead_lettered(
    cluster: Cluster, broker: object, producer: Producer
) -> None:
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    pool = await create_pool(cluster.url, size=4)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE done (n int PRIMARY KEY)")

    async def handler(event: ImportRequested) -> list[Event]:
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_sleep(0.02)")
            await conn.execute(
                "INSERT INTO done VALUES ($1) ON CONFLICT DO NOTHING", int(event.task_id[1:])
            )
        return []

    stopping = asyncio.Event()
    stage = stage_of(bootstrap, producer, TOPIC, Route(ImportRequested, handler), stopping)
    total = 400
    await producer.publish(*(request(n) for n in range(total)))
    await stage.start()
    run = asyncio.create_task(stage.run())
    not_ready_seen = False

    async def done() -> int:
        nonlocal not_ready_seen
        not_ready_seen |= not stage.healthy
        try:
            async with pool.acquire() as conn:
                return int(await conn.fetchval("SELECT count(*) FROM done"))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return -1

    counts = [0]

    async def reached(n: int) -> bool:
        counts.append(await done())
        if counts[-1] >= n:
            return True
        assert not run.done(), f"the stage stopped at {counts[-1]}/{n}"
        return False

    try:
        for restart_at in (50, 200):
            await eventually(partial(reached, restart_at), 120, what="no progress", interval=0.05)
            await asyncio.to_thread(cluster.ctl, "-m", "fast", "stop")
            for _ in range(30):  # down for 3 s: far longer than the poison retries take
                not_ready_seen |= not stage.healthy
                await asyncio.sleep(0.1)
            await asyncio.to_thread(cluster.ctl, "start")
        await eventually(
            partial(reached, total),
            180,
            what=lambda: f"stuck at {counts[-1]}/{total}",
            interval=0.2,
        )
    finally:
        stopping.set()
        await run
        await stage.stop()
        await pool.close()
    assert await list_letters(bootstrap, TOPIC) == []  # nothing dead-lettered
    assert not_ready_seen, "the stage never reported not-ready during the outage"


async def test_outage_retries_do_not_use_up_a_messages_attempts(
    cluster: Cluster, broker: object, producer: Producer
) -> None:
    """The database is away for 3 s (dozens of outage retries); each message then fails once
    for a reason of its own: it still has its retries, and none is dead-lettered."""
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    pool = await create_pool(cluster.url, size=4)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE done (n int PRIMARY KEY)")
    await pool.close()
    await asyncio.to_thread(cluster.ctl, "-m", "fast", "stop")
    pool = await asyncpg.create_pool(cluster.url, min_size=0, max_size=4)
    failed_once: set[str] = set()

    async def handler(event: ImportRequested) -> list[Event]:
        async with pool.acquire() as conn:
            if event.task_id not in failed_once:  # the database answers: one flaky failure
                failed_once.add(event.task_id)
                raise RuntimeError("a transient fault of this message")
            await conn.execute("INSERT INTO done VALUES ($1)", int(event.task_id[1:]))
        return []

    stopping = asyncio.Event()
    stage = stage_of(bootstrap, producer, TOPIC, Route(ImportRequested, handler), stopping)
    await producer.publish(*(request(n) for n in range(8)))
    await stage.start()
    run = asyncio.create_task(stage.run())

    def healthy() -> bool:
        assert not run.done(), "the stage stopped"
        return stage.healthy

    async def all_handled() -> bool:
        async with pool.acquire() as conn:
            if await conn.fetchval("SELECT count(*) FROM done") == 8:
                return True
        assert not run.done(), "the stage stopped"
        assert await list_letters(bootstrap, TOPIC) == [], "dead-lettered"
        return False

    try:
        # The first fetch reaches the handler, which cannot connect: not ready.
        await eventually(lambda: not healthy(), 60, what="never tried the database", interval=0.05)
        await asyncio.sleep(3)  # the outage: dozens of outage retries
        await asyncio.to_thread(cluster.ctl, "start")
        await eventually(all_handled, 60, what="messages not handled", interval=0.2)
        # Ready again once the batch is committed.
        await eventually(healthy, 60, what="still not ready", interval=0.05)
    finally:
        stopping.set()
        await run
        await stage.stop()
        await pool.close()
    assert await list_letters(bootstrap, TOPIC) == []


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 4 MiB tmpfs of this test (root is available in CI), unmounted afterwards."""
    with small_filesystem("4m") as folder:
        yield folder


async def test_full_storage_is_held_and_retried_until_space_is_freed(
    small_disk: Path, tmp_path: Path, broker: object, producer: Producer
) -> None:
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    events = unique_events(tmp_path, 6, "full", 512)  # 6 instances of ~512 KiB: 3 MiB
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (3 << 20))  # 1 MiB left: the third instance does not fit
    store = LocalStore((small_disk / "storage").as_uri())
    stored: list[Event] = []

    async def handler(event: InstanceUnique) -> list[Event]:
        out = await handle_unique(event, storage=store)
        stored.extend(out)
        return out

    stopping = asyncio.Event()
    topic = InstanceUnique.TOPIC
    stage = stage_of(bootstrap, producer, topic, Route(InstanceUnique, handler), stopping)
    await producer.publish(*events)
    await stage.start()
    run = asyncio.create_task(stage.run())

    def stored_at_least(n: int) -> bool:
        if len(stored) >= n:
            return True
        assert not run.done(), f"the stage stopped, {len(stored)} stored"
        return False

    try:
        # One instance fits, then the disk is full.
        await eventually(partial(stored_at_least, 1), 60, what="nothing stored", interval=0.05)
        await asyncio.sleep(3)  # far longer than the retries of a poison message take
        assert await list_letters(bootstrap, topic) == [], "a full disk was dead-lettered"
        assert not stage.healthy and len(stored) < len(events)
        filler.unlink()  # space freed
        await eventually(
            partial(stored_at_least, len(events)), 60, what=lambda: f"{len(stored)} stored"
        )
    finally:
        stopping.set()
        await run
        await stage.stop()
    assert await list_letters(bootstrap, topic) == []
    for event in events:  # every byte as received, nothing left half-written
        key = storage_key(event)
        data = b"".join([c async for c in store.read(key)])
        assert data == Path(event.file.uri.removeprefix("file://")).read_bytes()
    assert not list((small_disk / "storage").rglob(".*.tmp"))
