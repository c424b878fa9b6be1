"""What the NAS watcher does: emit each new or changed file once, and scan import tasks."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from libs.contracts.events import Event, ImportRequested, discovered_event
from libs.db.ledger import LedgerRow, NewFile
from libs.db.tasks import Task
from libs.runtime.logging import get_logger
from services.nas_watcher.scanner import (
    FileStat,
    ScanProblems,
    file_uri,
    inside,
    is_settled,
    stat_file,
    walk,
)

log = get_logger(__name__)
SOURCE = "nas"
MAX_SETTLE_WAIT_SECONDS = 600.0

Publish = Callable[[Sequence[Event]], Awaitable[None]]


class ScanStore(Protocol):
    async def seen(self, directory: str) -> dict[str, tuple[int, int]]: ...
    async def record_watched(
        self, directory: str, files: Sequence[FileStat], new: Sequence[NewFile]
    ) -> list[LedgerRow]: ...
    async def record_task_files(self, new: Sequence[NewFile]) -> list[LedgerRow]: ...
    async def renew(self, task_id: str) -> bool: ...
    async def finish(self, task_id: str) -> None: ...
    async def fail(self, task_id: str, error: str) -> None: ...


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
    root: Path, problems: ScanProblems
) -> AsyncIterator[tuple[str, list[FileStat]]]:
    """Directory listings come from a thread, so a slow NAS never blocks the event loop."""
    it = walk(root, problems)
    while (item := await asyncio.to_thread(next, it, None)) is not None:
        yield item


async def scan_root(
    root: Path, *, store: ScanStore, publish: Publish, settle_seconds: float
) -> ScanReport:
    """Emit every file under `root` that is new or changed (size or mtime) and settled."""
    report = ScanReport()
    async for directory, files in _walk_async(root, report.problems):
        report.files_seen += len(files)
        seen = await store.seen(directory)
        now = time.time_ns()
        changed = [f for f in files if seen.get(f.name) != (f.size, f.mtime_ns)]
        ready = [f for f in changed if is_settled(f, now, settle_seconds)]
        report.unsettled += len(changed) - len(ready)
        if ready:
            rows = await store.record_watched(
                directory, ready, [new_file(directory, f) for f in ready]
            )
            await publish([discovered_event(r) for r in rows])
            report.emitted += len(rows)
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
    deferred: list[tuple[str, FileStat]] = []

    async def flush() -> None:
        rows = await store.record_task_files(pending)
        await publish([discovered_event(r) for r in rows])
        pending.clear()
        if not await store.renew(task.id):
            raise RuntimeError(f"lost the lease on task {task.id}")

    listing = _single(path) if path.is_file() else _walk_async(path, ScanProblems())
    async for directory, files in listing:
        now = time.time_ns()
        for f in files:
            if is_settled(f, now, settle_seconds):
                pending.append(new_file(directory, f, task.id))
            else:
                deferred.append((directory, f))
        if len(pending) >= batch_size:
            await flush()
    waited = 0.0
    while deferred and waited < MAX_SETTLE_WAIT_SECONDS:
        await asyncio.sleep(settle_seconds)
        waited += settle_seconds
        still: list[tuple[str, FileStat]] = []
        for directory, old in deferred:
            current = stat_file(os.path.join(directory, old.name))
            if current is None:
                continue  # removed while waiting
            if current == old:
                pending.append(new_file(directory, current, task.id))
            else:
                still.append((directory, current))
        deferred = still
    pending.extend(new_file(d, f, task.id) for d, f in deferred)  # waited long enough
    await flush()
    await store.finish(task.id)


async def _single(path: Path) -> AsyncIterator[tuple[str, list[FileStat]]]:
    f = stat_file(str(path))
    if f is not None:
        yield str(path.parent), [f]


async def handle_import_requested(event: ImportRequested, *, wake: asyncio.Event) -> list[Event]:
    """The task itself lives in PostgreSQL; the event only wakes the task scanner."""
    log.info("import requested", task_id=event.task_id, source_path=event.source_path)
    wake.set()
    return []
