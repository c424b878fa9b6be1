"""Wires the real adapters: PostgreSQL, the producer, Orthanc's REST API and the webhook."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial

import asyncpg
from prometheus_client import Counter, Gauge

from libs.db import orthanc
from libs.db.ledger import LedgerRow
from libs.db.orthanc import Finished, StagedInstance
from libs.runtime.logging import get_logger
from libs.runtime.periodic import AT_ONCE, After
from libs.runtime.service import Runtime
from services.orthanc_watcher.client import OrthancClient
from services.orthanc_watcher.config import OrthancWatcherSettings
from services.orthanc_watcher.rounds import Publish, clean_up, follow_once, ingest_resource
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
        s.url,
        username=s.username,
        password=s.password,
        timeout=s.request_timeout_seconds,
        ca_bundle=s.ca_bundle,
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

    follow = partial(
        follow_round,
        client,
        store,
        producer.publish_all,
        s,
        taken=taken.labels("changes"),
        position=position,
    )
    if s.follow_changes:
        rt.every("changes", s.poll_interval_seconds, follow)
    webhook = partial(
        take_webhook, client, store, producer.publish_all, s, queue, taken.labels("webhook")
    )
    rt.every("webhooks", 0.0, webhook)
    tidy = partial(clean_up_round, client, store, s.delete_after_indexed)
    rt.every("clean-up", s.cleanup_interval_seconds, tidy, wait_first=True)


async def clean_up_round(orthanc: OrthancClient, store: PgInstanceStore, delete: bool) -> None:
    await clean_up(orthanc=orthanc, store=store, delete_from_orthanc=delete)


async def follow_round(
    orthanc: OrthancClient,
    store: PgInstanceStore,
    publish: Publish,
    s: OrthancWatcherSettings,
    *,
    taken: Counter,
    position: Gauge,
) -> After | None:
    """One page of /changes; goes on at once until the feed is read to its end.
    A first start with `start_at_end` takes the feed from its current end."""
    if s.start_at_end and await store.cursor() is None:
        await store.record([], await orthanc.last_seq())
    emitted, done = await follow_once(
        orthanc=orthanc, store=store, publish=publish, staging=s.staging_dir, limit=s.changes_limit
    )
    taken.inc(emitted)
    position.set(await store.cursor() or 0)
    return None if done else AT_ONCE


async def take_webhook(
    orthanc: OrthancClient,
    store: PgInstanceStore,
    publish: Publish,
    s: OrthancWatcherSettings,
    queue: Queue,
    taken: Counter,
) -> After:
    """One resource the webhook queued, if any within a second; the feed takes it in later
    if this fails and it is followed."""
    try:
        level, resource_id = await asyncio.wait_for(queue.get(), timeout=1.0)
    except TimeoutError:
        return AT_ONCE
    try:
        n = await ingest_resource(
            level, resource_id, orthanc=orthanc, store=store, publish=publish, staging=s.staging_dir
        )
        taken.inc(n)
    except Exception as exc:  # the feed takes it in later if it is followed
        log.warning("webhook ingest failed", level=level, id=resource_id, error=repr(exc))
    return AT_ONCE
