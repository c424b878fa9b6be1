"""Wires the real adapters: PostgreSQL (discs, tasks, ledger) and the producer."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import asyncpg
from prometheus_client import Counter

from libs.contracts.events import Event
from libs.db import discs, ledger, tasks
from libs.db.discs import DISC_KINDS, OpenDisc
from libs.db.ledger import LedgerRow, NewFile
from libs.db.tasks import TaskCounters
from libs.runtime.logging import get_logger
from libs.runtime.service import Runtime
from services.iso_watcher.config import IsoWatcherSettings
from services.iso_watcher.rounds import Settler, run_round

log = get_logger(__name__)


class PgDiscStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def open_discs(self) -> list[OpenDisc]:
        async with self.pool.acquire() as conn:
            return await discs.open_discs(conn)

    async def create(self, source_path: str, kind: str) -> str | None:
        assert kind in DISC_KINDS
        async with self.pool.acquire() as conn:
            return await discs.create_disc(conn, source_path, kind)

    async def recorded(self, task_id: str) -> set[str]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT uri FROM ingest_files WHERE task_id = $1", task_id)
        return {r["uri"] for r in rows}

    async def record(self, files: Sequence[NewFile]) -> list[LedgerRow]:
        async with self.pool.acquire() as conn:
            return await ledger.record_discovered(conn, files)

    async def finish(self, task_id: str, scan: dict[str, Any]) -> None:
        async with self.pool.acquire() as conn:
            await discs.save_scan(conn, task_id, scan)
            await ledger.finish_task_scan(conn, task_id)

    async def fail(self, task_id: str, error: str, scan: dict[str, Any]) -> None:
        log.warning("disc unreadable", task_id=task_id, error=error)
        async with self.pool.acquire() as conn:
            await discs.save_scan(conn, task_id, scan)
            await tasks.fail_task(conn, task_id, error)

    async def counters(self, task_id: str) -> TaskCounters:
        async with self.pool.acquire() as conn:
            return await tasks.task_counters(conn, task_id)

    async def plan_move(self, task_id: str, moved_to: str) -> None:
        async with self.pool.acquire() as conn:
            await discs.plan_move(conn, task_id, moved_to)

    async def finalize(self, task_id: str) -> None:
        async with self.pool.acquire() as conn:
            await discs.finalize(conn, task_id)


async def wire(rt: Runtime) -> None:
    s = rt.settings
    assert isinstance(s, IsoWatcherSettings)
    pool = await rt.pool()
    producer = await rt.producer()
    store = PgDiscStore(pool)
    settler = Settler(s.settle_seconds)
    for folder in (s.inbox, s.processed, s.failed, s.staging_dir):
        folder.mkdir(parents=True, exist_ok=True)
    rounds = Counter(
        "dicomflow_iso_watcher_rounds_total",
        "Completed rounds over the inbox (a flat line: the watcher stopped looking).",
        registry=rt.registry,
    )
    lock = zlib.crc32(str(s.inbox).encode()) & 0x7FFFFFFF  # advisory keys are int4

    async def publish(events: Sequence[Event]) -> None:
        await producer.publish(*events)

    async def watch() -> None:
        while True:
            try:
                async with pool.acquire() as conn:
                    # One reader of an inbox across replicas: the others skip the round.
                    if await conn.fetchval("SELECT pg_try_advisory_lock(3, $1)", lock):
                        try:
                            await run_round(
                                inbox=s.inbox,
                                settler=settler,
                                store=store,
                                publish=publish,
                                staging=s.staging_dir,
                                processed=s.processed,
                                failed=s.failed,
                                batch_size=s.scan_batch_size,
                            )
                            rounds.inc()
                        finally:
                            await conn.execute("SELECT pg_advisory_unlock(3, $1)", lock)
            except Exception as exc:  # a failed round is retried (resumably) at the next one
                log.warning("inbox round failed", inbox=str(s.inbox), error=repr(exc))
            if not await rt.sleep(s.scan_interval_seconds):
                return

    rt.add_worker("inbox", watch)
