"""Wires the real adapters: PostgreSQL, the producer, Orthanc's REST API and the webhook."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
from prometheus_client import Counter, Gauge

from libs.contracts.events import Event
from libs.db import orthanc
from libs.db.ledger import LedgerRow
from libs.db.orthanc import Finished, StagedInstance
from libs.runtime.logging import get_logger
from libs.runtime.service import Runtime
from services.orthanc_watcher.client import OrthancClient
from services.orthanc_watcher.config import OrthancWatcherSettings
from services.orthanc_watcher.rounds import clean_up, follow_once, ingest_resource
from services.orthanc_watcher.webhook import Queue, webhook_app

log = get_logger(__name__)
WEBHOOK_QUEUE = 1000


class PgInstanceStore:
    def __init__(self, pool: asyncpg.Pool, server: str) -> None:
        self.pool = pool
        self.server = server

    async def cursor(self) -> int | None:
        async with self.pool.acquire() as conn:
            return await orthanc.cursor(conn, self.server)

    async def unknown(self, instance_ids: Sequence[str]) -> list[str]:
        async with self.pool.acquire() as conn:
            return await orthanc.unknown(conn, self.server, instance_ids)

    async def record(
        self, staged: Sequence[StagedInstance], last_seq: int | None = None
    ) -> list[LedgerRow]:
        async with self.pool.acquire() as conn:
            return await orthanc.record(conn, self.server, staged, last_seq)

    async def finished(self) -> list[Finished]:
        async with self.pool.acquire() as conn:
            return await orthanc.finished(conn, self.server)

    async def mark_cleaned(self, instance_ids: Sequence[str]) -> None:
        async with self.pool.acquire() as conn:
            await orthanc.mark_cleaned(conn, self.server, instance_ids)


async def wire(rt: Runtime) -> None:
    s = rt.settings
    assert isinstance(s, OrthancWatcherSettings)
    pool = await rt.pool()
    producer = await rt.producer()
    client = OrthancClient(
        s.url, username=s.username, password=s.password, timeout=s.request_timeout_seconds
    )
    rt.resources.push_async_callback(client.close)
    rt.readiness.add("orthanc", client.alive)
    store = PgInstanceStore(pool, s.url)
    queue: Queue = asyncio.Queue(WEBHOOK_QUEUE)
    rt.app = webhook_app(pool, queue, s.webhook_secret, rt.registry, rt.readiness)
    taken = Counter(
        "dicomflow_orthanc_watcher_instances_total",
        "Instances downloaded from Orthanc and emitted, by path (changes, webhook).",
        ["via"],
        registry=rt.registry,
    )
    position = Gauge(
        "dicomflow_orthanc_watcher_cursor",
        "Last /changes sequence number taken in (a flat line: the feed is not followed).",
        registry=rt.registry,
    )

    async def publish(events: Sequence[Event]) -> None:
        await producer.publish(*events)

    async def follow() -> None:
        if await store.cursor() is None and s.start_at_end:
            await store.record([], await client.last_seq())
        while True:
            try:
                emitted, done = await follow_once(
                    orthanc=client,
                    store=store,
                    publish=publish,
                    staging=s.staging_dir,
                    limit=s.changes_limit,
                )
                taken.labels("changes").inc(emitted)
                position.set(await store.cursor() or 0)
            except Exception as exc:  # Orthanc or the database away: try again next round
                log.warning("following /changes failed", error=repr(exc))
                done = True
            if done and not await rt.sleep(s.poll_interval_seconds):
                return
            if rt.stopping.is_set():
                return

    async def webhooks() -> None:
        while not rt.stopping.is_set():
            try:
                level, resource_id = await asyncio.wait_for(queue.get(), timeout=1.0)
            except TimeoutError:
                continue
            try:
                n = await ingest_resource(
                    level,
                    resource_id,
                    orthanc=client,
                    store=store,
                    publish=publish,
                    staging=s.staging_dir,
                )
                taken.labels("webhook").inc(n)
            except Exception as exc:  # the feed takes it in later if it is followed
                log.warning("webhook ingest failed", level=level, id=resource_id, error=repr(exc))

    async def tidy() -> None:
        while await rt.sleep(s.cleanup_interval_seconds):
            try:
                await clean_up(
                    orthanc=client, store=store, delete_from_orthanc=s.delete_after_indexed
                )
            except Exception as exc:  # retried next round
                log.warning("clean-up failed", error=repr(exc))

    if s.follow_changes:
        rt.add_worker("changes", follow)
    rt.add_worker("webhooks", webhooks)
    rt.add_worker("clean-up", tidy)
