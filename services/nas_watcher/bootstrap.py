from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import asyncpg
from prometheus_client import Counter, Gauge

from libs.contracts.events import ImportRequested
from libs.db import ledger, nas, tasks
from libs.db.ledger import LedgerRow, NewFile
from libs.db.locks import LockSpace, SingleReader
from libs.kafka.consumer import Route
from libs.runtime.logging import get_logger
from libs.runtime.periodic import AT_ONCE, After, meanwhile
from libs.runtime.service import Runtime
from services.nas_watcher.config import NasWatcherSettings
from services.nas_watcher.rounds import (
    STAGE,
    LeaseLost,
    Publish,
    ScanReport,
    handle_import_requested,
    scan_root,
    scan_task,
)
from services.nas_watcher.scanner import FileStat

log = get_logger(__name__)
TASK_RETRY_SECONDS = 2.0


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
            pool,
            store,
            producer.publish_all,
            settle_seconds=settings.settle_seconds,
            scans=scans,
            files_seen=files_seen,
        )
        rt.every("watch", settings.scan_interval_seconds, scan)
    work = partial(run_task, pool, owner, store, producer.publish_all, settings, wake)
    rt.every("tasks", TASK_RETRY_SECONDS, work)
    await rt.consumer(
        {ImportRequested.TOPIC: Route(ImportRequested, partial(handle_import_requested, wake=wake))}
    )


async def scan_roots(
    roots: Sequence[Path],
    pool: asyncpg.Pool,
    store: PgScanStore,
    publish: Publish,
    *,
    settle_seconds: float,
    scans: Counter,
    files_seen: Gauge,
) -> None:
    """One round over the watched roots; a root that fails is retried at the next round."""
    for root in roots:
        try:
            report = await _scan_root_once(pool, root, store, publish, settle_seconds, roots)
            if report is not None:
                scans.labels(str(root)).inc()
                files_seen.labels(str(root)).set(report.files_seen)
        except Exception as exc:  # a failed round is retried at the next interval
            log.warning("scan failed", root=str(root), error=repr(exc))


async def run_task(
    pool: asyncpg.Pool,
    owner: str,
    store: PgScanStore,
    publish: Publish,
    settings: NasWatcherSettings,
    wake: asyncio.Event,
) -> After | None:
    """Lease the next import task and scan it (at once again after one); with none, wait
    for an ImportRequested (`wake`) or two seconds."""
    try:
        async with pool.acquire() as conn:
            task = await tasks.lease_next_scan(
                conn, owner=owner, lease_seconds=settings.task_lease_seconds
            )
    except Exception as exc:  # database away: try again shortly
        log.warning("cannot lease import tasks", error=repr(exc))
        return None
    if task is None:
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=TASK_RETRY_SECONDS)
        return AT_ONCE
    log.info("import scan started", task_id=task.id, source_path=task.source_path)
    # Renew the lease while the scan runs (long walks, files still settling).
    lease = settings.task_lease_seconds / 3
    try:
        async with meanwhile("scan-lease", lease, partial(_renew, store, task.id)):
            await scan_task(
                task,
                store=store,
                publish=publish,
                allowed_roots=settings.allowed_import_roots(),
                settle_seconds=settings.settle_seconds,
                batch_size=settings.scan_batch_size,
            )
    except LeaseLost:
        log.info("import scan stopped: task paused, cancelled or taken over", task_id=task.id)
        return AT_ONCE
    except Exception as exc:  # the lease expires and the scan resumes (idempotently)
        log.warning("import scan interrupted", task_id=task.id, error=repr(exc))
        return None
    log.info("import scan finished", task_id=task.id)
    return AT_ONCE


async def _renew(store: PgScanStore, task_id: str) -> None:
    await store.renew(task_id)  # a missed renewal is retried; scans resume


async def _scan_root_once(
    pool: asyncpg.Pool,
    root: Path,
    store: PgScanStore,
    publish: Publish,
    settle: float,
    roots: Sequence[Path],
) -> ScanReport | None:
    """One scanner per root across replicas: a session advisory lock keyed by the root."""
    path = root.absolute()
    if not path.is_dir():
        log.warning("watched root missing", root=str(path))
        return None
    async with SingleReader(pool, LockSpace.NAS_ROOT, str(path)).held() as mine:
        if not mine:
            return None  # another replica is scanning this root
        report = await scan_root(
            path, store=store, publish=publish, settle_seconds=settle, roots=list(roots)
        )
    if report.emitted or report.problems.unreadable_dirs or report.problems.escaping_links:
        log.info(
            "scan done",
            root=str(path),
            files=report.files_seen,
            emitted=report.emitted,
            unsettled=report.unsettled,
            unreadable=len(report.problems.unreadable_dirs),
            links_outside_roots=len(report.problems.escaping_links),
        )
    return report
