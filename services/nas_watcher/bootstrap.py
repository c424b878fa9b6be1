from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Sequence
from functools import partial

import asyncpg
from prometheus_client import Counter, Gauge

from libs.contracts.events import ImportRequested
from libs.db import ledger, nas, tasks
from libs.db.ledger import LedgerRow, NewFile
from libs.db.locks import LockSpace, SingleReader
from libs.kafka.consumer import Route
from libs.runtime.logging import get_logger
from libs.runtime.service import Runtime
from services.nas_watcher.config import NasWatcherSettings
from services.nas_watcher.rounds import (
    STAGE,
    TASK_RETRY_SECONDS,
    handle_import_requested,
    run_task,
    scan_roots,
)
from services.nas_watcher.scanner import FileStat

log = get_logger(__name__)


class PgScanStore:
    def __init__(self, pool: asyncpg.Pool, owner: str, lease_seconds: float) -> None:
        self.pool = pool
        self.owner = owner
        self.lease_seconds = lease_seconds

    async def seen(self, directory: str) -> dict[str, tuple[int, int]]:
        async with self.pool.acquire() as conn:
            return await nas.seen_in_dir(conn, directory)

    async def record_watched(
        self, directory: str, files: Sequence[FileStat], new: Sequence[NewFile]
    ) -> list[LedgerRow]:
        async with self.pool.acquire() as conn:
            return await nas.record_watched(
                conn,
                directory,
                [f.name for f in files],
                [f.size for f in files],
                [f.mtime_ns for f in files],
                new,
            )

    async def record_task_files(self, new: Sequence[NewFile]) -> list[LedgerRow]:
        async with self.pool.acquire() as conn:
            return await ledger.record_discovered(conn, new)

    async def record_task_failures(self, task_id: str, new: Sequence[NewFile], reason: str) -> None:
        """Files the scan refuses to read: recorded as already failed, with the reason."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await ledger.record_discovered(conn, new)
            failures = [(r.id, reason) for r in rows]
            await ledger.mark_failed_many(conn, failures, stage=STAGE, task_id=task_id)

    async def lease_next(self) -> tasks.Task | None:
        async with self.pool.acquire() as conn:
            return await tasks.lease_next_scan(
                conn, owner=self.owner, lease_seconds=self.lease_seconds
            )

    async def renew(self, task_id: str) -> bool:
        async with self.pool.acquire() as conn:
            return await tasks.renew_lease(
                conn, task_id, owner=self.owner, lease_seconds=self.lease_seconds
            )

    async def finish(self, task_id: str) -> None:
        async with self.pool.acquire() as conn:
            await ledger.finish_task_scan(conn, task_id)

    async def fail(self, task_id: str, error: str) -> None:
        log.warning("import task failed", task_id=task_id, error=error)
        async with self.pool.acquire() as conn:
            await tasks.fail_task(conn, task_id, error)


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, NasWatcherSettings)
    pool = await rt.pool()
    producer = await rt.producer()
    owner = f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
    store = PgScanStore(pool, owner, settings.task_lease_seconds)
    wake = asyncio.Event()
    scans = Counter(
        "dicomflow_nas_watcher_scans_total",
        "Completed scans of a watched root.",
        ["root"],
        registry=rt.registry,
    )
    files_seen = Gauge(
        "dicomflow_nas_watcher_files_seen",
        "Files found in a watched root by the last scan.",
        ["root"],
        registry=rt.registry,
    )

    if settings.watch:
        scan = partial(
            scan_roots,
            settings.roots,
            store=store,
            publish=producer.publish_all,
            settle_seconds=settings.settle_seconds,
            exclusive=partial(SingleReader, pool, LockSpace.NAS_ROOT),
            scans=scans,
            files_seen=files_seen,
        )
        rt.every("watch", settings.scan_interval_seconds, scan)
    work = partial(
        run_task,
        store,
        producer.publish_all,
        wake,
        lease_seconds=settings.task_lease_seconds,
        allowed_roots=settings.allowed_import_roots(),
        settle_seconds=settings.settle_seconds,
        batch_size=settings.scan_batch_size,
    )
    rt.every("tasks", TASK_RETRY_SECONDS, work)
    await rt.consumer(
        {ImportRequested.TOPIC: Route(ImportRequested, partial(handle_import_requested, wake=wake))}
    )
