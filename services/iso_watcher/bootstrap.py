"""Wires the real adapters: PostgreSQL (discs, tasks, ledger) and the producer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import asyncpg
from prometheus_client import Counter

from libs.db import discs, ledger, task_control, tasks
from libs.db.discs import DISC_KINDS, OpenDisc
from libs.db.ledger import LedgerRow, NewFile
from libs.db.locks import LockSpace, SingleReader
from libs.db.tasks import TaskCounters
from libs.runtime.logging import get_logger
from libs.runtime.sandbox import IsolatedExecutor
from libs.runtime.service import Runtime
from services.iso_watcher.config import IsoWatcherSettings
from services.iso_watcher.dicomdir import Plan, survey
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

    async def go_on(self, task_id: str) -> None:
        async with self.pool.acquire() as conn:
            await task_control.go_on(conn, task_id)

    async def record(self, task_id: str, files: Sequence[NewFile]) -> list[LedgerRow]:
        async with self.pool.acquire() as conn, conn.transaction():
            # Locked with the rows: a pause or cancel commits before or after, never between.
            await task_control.go_on(conn, task_id, lock=True)
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
    parser = IsolatedExecutor(
        workers=1,
        memory_limit_mb=s.parse_memory_limit_mb,
        timeout_s=s.parse_timeout_seconds,
        preload=(survey.__module__,),
    )
    rt.resources.callback(parser.close)
    await parser.warm_up()

    async def survey_isolated(source_path: str) -> tuple[dict[str, int], Plan]:
        files, plan = await parser.run(survey, source_path)
        return files, plan

    round_ = partial(
        run_round,
        inbox=s.inbox,
        settler=settler,
        store=store,
        publish=producer.publish_all,
        staging=s.staging_dir,
        processed=s.processed,
        failed=s.failed,
        batch_size=s.scan_batch_size,
        survey=survey_isolated,
    )
    rt.every(
        "inbox",
        s.scan_interval_seconds,
        partial(counted, round_, rounds),
        # One reader of an inbox across replicas: the others skip the round.
        single_reader=SingleReader(pool, LockSpace.ISO_INBOX, str(s.inbox)),
    )


async def counted(round_: Callable[[], Awaitable[object]], rounds: Counter) -> None:
    """A failed round is retried (resumably) at the next one; a flat count shows it."""
    await round_()
    rounds.inc()
