"""What the NAS watcher does: emit each new or changed file once, and scan import tasks.
The periodic rounds (`scan_roots`, `run_task`) take their ports: the bootstrap only wires."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

from prometheus_client import Counter, Gauge

from libs.contracts.events import Event, ImportRequested, discovered_event
from libs.db.ledger import LedgerRow, NewFile
from libs.db.tasks import Task
from libs.runtime.logging import get_logger
from libs.runtime.periodic import AT_ONCE, After, Exclusive, meanwhile
from services.nas_watcher.scanner import (
    FileStat,
    LocalClocks,
    Look,
    ScanProblems,
    SecondLook,
    file_uri,
    inside,
    look_again,
    stat_file,
    walk,
)

log = get_logger(__name__)
SOURCE = "nas"
MAX_SETTLE_WAIT_SECONDS = 600.0
STAGE = "nas-watcher"
TASK_RETRY_SECONDS = 2.0  # with no task to scan, look again this often (or when woken)
# One reason whatever the target: a failure must not tell whether a path outside exists.
OUTSIDE_ROOTS = "symbolic link leading outside the import roots: not followed"

Publish = Callable[[Sequence[Event]], Awaitable[None]]


class ScanStore(Protocol):
    async def seen(self, directory: str) -> dict[str, tuple[int, int]]: ...
    async def record_watched(
        self, directory: str, files: Sequence[FileStat], new: Sequence[NewFile]
    ) -> list[LedgerRow]: ...
    async def record_task_files(self, new: Sequence[NewFile]) -> list[LedgerRow]: ...
    async def record_task_failures(
        self, task_id: str, new: Sequence[NewFile], reason: str
    ) -> None: ...
    async def lease_next(self) -> Task | None:
        """Lease the oldest import task whose scan is not finished and not leased by a live
        scanner (this scanner's lease, renewed by `renew`)."""
        ...

    async def renew(self, task_id: str) -> bool:
        """Extend this scanner's lease; False when the task is no longer this scanner's
        (paused or cancelled: either clears the lease; or taken over)."""
        ...

    async def finish(self, task_id: str) -> None: ...
    async def fail(self, task_id: str, error: str) -> None: ...


class LeaseLost(Exception):
    """The task was paused or cancelled (either clears its lease), or another scanner took it
    over: this scan stops; a resumed task is leased again and its scan resumes."""


@dataclass
class ScanReport:
    files_seen: int = 0
    emitted: int = 0
    unsettled: int = 0
    problems: ScanProblems = field(default_factory=ScanProblems)


def new_file(directory: str, f: FileStat, task_id: str | None = None) -> NewFile:
    return NewFile(
        source=SOURCE,
        uri=file_uri(directory, f.name),
        origin=os.path.join(directory, f.name),
        size=f.size,
        correlation_id=uuid.uuid4().hex,
        task_id=task_id,
    )


async def _walk_async(
    root: Path, problems: ScanProblems, roots: list[Path]
) -> AsyncIterator[tuple[str, list[FileStat]]]:
    """Directory listings come from a thread, so a slow NAS never blocks the event loop."""
    it = walk(root, problems, roots=roots)
    while (item := await asyncio.to_thread(next, it, None)) is not None:
        yield item


async def scan_root(
    root: Path,
    *,
    store: ScanStore,
    publish: Publish,
    settle_seconds: float,
    roots: list[Path] | None = None,
) -> ScanReport:
    """Emit every file under `root` that is new or changed (size or mtime) and settled
    (the same on two looks `settle_seconds` apart; one still changing waits for the next
    round); symbolic links are followed only inside `roots` (default: `root`)."""
    report = ScanReport()
    looks = SecondLook(settle_seconds, LocalClocks(settle_seconds))

    async def emit(due: list[Look]) -> None:
        if not due:
            return
        settled, changed = await asyncio.to_thread(look_again, due, time.monotonic())
        report.unsettled += len(changed)
        by_dir: dict[str, list[FileStat]] = defaultdict(list)
        for look in settled:
            by_dir[look.directory].append(look.file)
        for directory, ready in by_dir.items():
            rows = await store.record_watched(
                directory, ready, [new_file(directory, f) for f in ready]
            )
            await publish([discovered_event(r) for r in rows])
            report.emitted += len(rows)

    async for directory, files in _walk_async(root, report.problems, roots or [root]):
        report.files_seen += len(files)
        seen = await store.seen(directory)
        changed = [f for f in files if seen.get(f.name) != (f.size, f.mtime_ns)]
        looks.add(directory, changed, time.monotonic())
        await emit(looks.due(time.monotonic()))
    while looks:
        await asyncio.sleep(looks.wait(time.monotonic()))
        await emit(looks.due(time.monotonic()))
    return report


async def scan_task(
    task: Task,
    *,
    store: ScanStore,
    publish: Publish,
    allowed_roots: list[Path],
    settle_seconds: float,
    batch_size: int = 500,
) -> None:
    """Record and emit every file under the task's folder; resumable (recorded files are
    skipped), and the task completes once each file reaches a final outcome."""
    path = Path(task.source_path)
    if not path.is_absolute() or not inside(path, allowed_roots):
        roots = ", ".join(str(r) for r in allowed_roots)
        await store.fail(task.id, f"{path} is outside the allowed import roots ({roots})")
        return
    if not path.exists():
        await store.fail(task.id, f"{path} does not exist")
        return
    pending: list[NewFile] = []

    async def flush() -> None:
        # The lease first: a paused or cancelled task (the lease cleared) records no more.
        if not await store.renew(task.id):
            raise LeaseLost(task.id)
        rows = await store.record_task_files(pending)
        await publish([discovered_event(r) for r in rows])
        pending.clear()

    problems = ScanProblems()
    looks = SecondLook(settle_seconds, LocalClocks(settle_seconds))

    async def take(due: list[Look]) -> None:
        if not due:
            return
        now = time.monotonic()
        settled, changed = await asyncio.to_thread(look_again, due, now)
        pending.extend(new_file(look.directory, look.file, task.id) for look in settled)
        for look in changed:
            if now - look.first < MAX_SETTLE_WAIT_SECONDS:
                looks.again_later(look)
            else:  # waited long enough: take it as it is
                pending.append(new_file(look.directory, look.file, task.id))
        if len(pending) >= batch_size:
            await flush()

    listing = _single(path) if path.is_file() else _walk_async(path, problems, allowed_roots)
    async for directory, files in listing:
        looks.add(directory, files, time.monotonic())
        await take(looks.due(time.monotonic()))
    while looks:
        await asyncio.sleep(looks.wait(time.monotonic()))
        await take(looks.due(time.monotonic()))
    await flush()
    if problems.escaping_links:  # the link's own path only, never where it leads
        links = [_link(p, task.id) for p in problems.escaping_links]
        await store.record_task_failures(task.id, links, OUTSIDE_ROOTS)
    await store.finish(task.id)


def _link(path: str, task_id: str) -> NewFile:
    return new_file(os.path.dirname(path), FileStat(os.path.basename(path), 0, 0), task_id)


async def _single(path: Path) -> AsyncIterator[tuple[str, list[FileStat]]]:
    f = stat_file(str(path))
    if f is not None:
        yield str(path.parent), [f]


async def scan_roots(
    roots: Sequence[Path],
    *,
    store: ScanStore,
    publish: Publish,
    settle_seconds: float,
    exclusive: Callable[[str], Exclusive],
    scans: Counter,
    files_seen: Gauge,
) -> None:
    """One round over the watched roots; a root that fails is retried at the next round.
    One scanner per root across replicas: `exclusive(root)` (a session advisory lock keyed
    by the root) is held around its scan, and a replica that does not get it skips the root."""
    for root in roots:
        try:
            report = await _scan_root_once(
                root, store, publish, settle_seconds, roots, exclusive(str(root.absolute()))
            )
            if report is not None:
                scans.labels(str(root)).inc()
                files_seen.labels(str(root)).set(report.files_seen)
        except Exception as exc:  # a failed round is retried at the next interval
            log.warning("scan failed", root=str(root), error=repr(exc))


async def _scan_root_once(
    root: Path,
    store: ScanStore,
    publish: Publish,
    settle: float,
    roots: Sequence[Path],
    exclusive: Exclusive,
) -> ScanReport | None:
    path = root.absolute()
    if not path.is_dir():
        log.warning("watched root missing", root=str(path))
        return None
    async with exclusive.held() as mine:
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


async def run_task(
    store: ScanStore,
    publish: Publish,
    wake: asyncio.Event,
    *,
    lease_seconds: float,
    allowed_roots: list[Path],
    settle_seconds: float,
    batch_size: int,
    idle_seconds: float = TASK_RETRY_SECONDS,
) -> After | None:
    """Lease the next import task and scan it (at once again after one); with none, wait
    for an ImportRequested (`wake`) or `idle_seconds`. The lease is renewed every third of
    `lease_seconds` while the scan runs (long walks, files still settling); a scan whose
    task was paused, cancelled or taken over stops at its next batch (`LeaseLost`)."""
    try:
        task = await store.lease_next()
    except Exception as exc:  # database away: try again shortly
        log.warning("cannot lease import tasks", error=repr(exc))
        return None
    if task is None:
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=idle_seconds)
        return AT_ONCE
    log.info("import scan started", task_id=task.id, source_path=task.source_path)
    try:
        async with meanwhile("scan-lease", lease_seconds / 3, partial(_renew, store, task.id)):
            await scan_task(
                task,
                store=store,
                publish=publish,
                allowed_roots=allowed_roots,
                settle_seconds=settle_seconds,
                batch_size=batch_size,
            )
    except LeaseLost:
        log.info("import scan stopped: task paused, cancelled or taken over", task_id=task.id)
        return AT_ONCE
    except Exception as exc:  # the lease expires and the scan resumes (idempotently)
        log.warning("import scan interrupted", task_id=task.id, error=repr(exc))
        return None
    log.info("import scan finished", task_id=task.id)
    return AT_ONCE


async def _renew(store: ScanStore, task_id: str) -> None:
    await store.renew(task_id)  # a missed renewal is retried; scans resume


async def handle_import_requested(event: ImportRequested, *, wake: asyncio.Event) -> list[Event]:
    """The task itself lives in PostgreSQL; the event only wakes the task scanner."""
    log.info("import requested", task_id=event.task_id, source_path=event.source_path)
    wake.set()
    return []
