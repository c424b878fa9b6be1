"""What the NAS watcher does: emit each new or changed file once, and scan import tasks."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import defaultdict
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
    async def renew(self, task_id: str) -> bool: ...
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


async def handle_import_requested(event: ImportRequested, *, wake: asyncio.Event) -> list[Event]:
    """The task itself lives in PostgreSQL; the event only wakes the task scanner."""
    log.info("import requested", task_id=event.task_id, source_path=event.source_path)
    wake.set()
    return []
