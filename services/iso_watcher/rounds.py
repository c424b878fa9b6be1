"""What the ISO watcher does with its inbox: a settled disc (an .iso image or a copied-CD
folder) becomes an import task; its files are read off the disc into staging, recorded in
the ledger and emitted; once the task is done the disc moves to processed/ or failed/ with a
JSON report beside it. The disc's structure is parsed by `survey` in an isolated worker
(memory and time limits): a disc that crashes, hangs or blows up its parser fails alone,
with the reason, and moves to failed/; the discs after it are read as usual.

A paused task's disc is not read: the reading stops before the survey or before the next
batch (nothing more copied, recorded or emitted) and resumes there once the task is resumed
(recorded files are skipped). A cancelled one stops for good and moves to failed/ once its
task has ended."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from libs.contracts.errors import PermanentError
from libs.contracts.events import Event, discovered_event
from libs.db.discs import OpenDisc
from libs.db.ledger import LedgerRow, NewFile
from libs.db.task_control import EMITTING, Stopped
from libs.db.tasks import TaskCounters
from libs.runtime.logging import get_logger
from libs.staging.files import sync_folder, write_chunks
from libs.storage.local import file_url
from services.iso_watcher.dicomdir import Plan, Problem, normalise
from services.iso_watcher.disc import DamagedDisc, Disc, UnreadableFile, copy_out, open_disc

log = get_logger(__name__)
SOURCE = "iso"
DONE = ("completed", "failed", "cancelled")
Publish = Callable[[Sequence[Event]], Awaitable[None]]
Signature = tuple[int, int, int]  # files, bytes, newest mtime
# `dicomdir.survey` in the isolated worker pool: (files, plan) of the disc at a path.
Survey = Callable[[str], Awaitable[tuple[dict[str, int], Plan]]]


class DiscStore(Protocol):
    async def open_discs(self) -> list[OpenDisc]: ...
    async def create(self, source_path: str, kind: str) -> str | None: ...
    async def recorded(self, task_id: str) -> set[str]: ...
    async def go_on(self, task_id: str) -> None:
        """Raises `Stopped` when the task is paused, cancelled or ended."""

    async def record(self, task_id: str, files: Sequence[NewFile]) -> list[LedgerRow]:
        """Raises `Stopped` (recording nothing) when the task is paused, cancelled or ended."""

    async def finish(self, task_id: str, scan: dict[str, Any]) -> None: ...
    async def fail(self, task_id: str, error: str, scan: dict[str, Any]) -> None: ...
    async def counters(self, task_id: str) -> TaskCounters: ...
    async def plan_move(self, task_id: str, moved_to: str) -> None: ...
    async def finalize(self, task_id: str) -> None: ...


@dataclass(frozen=True)
class Entry:
    path: Path
    kind: str  # "iso" or "disc-folder"
    signature: Signature


def inbox_entries(inbox: Path, skip: Collection[Path]) -> list[Entry]:
    """`.iso` files and folders with a DICOMDIR at their top, directly in the inbox."""
    out: list[Entry] = []
    for child in sorted(inbox.iterdir()):
        if child.name.startswith(".") or child in skip or child.is_symlink():
            continue
        if child.is_file() and child.suffix.lower() == ".iso":
            st = child.stat()
            out.append(Entry(child, "iso", (1, st.st_size, st.st_mtime_ns)))
        elif child.is_dir() and any(
            normalise(c.name) == "DICOMDIR" for c in child.iterdir() if c.is_file()
        ):
            out.append(Entry(child, "disc-folder", _tree_signature(child)))
    return out


def _tree_signature(folder: Path) -> Signature:
    count = total = newest = 0
    for directory, _, names in os.walk(folder):
        for name in names:
            with_stat = Path(directory, name).lstat()
            count, total = count + 1, total + with_stat.st_size
            newest = max(newest, with_stat.st_mtime_ns)
    return (count, total, newest)


class Settler:
    """A disc is complete once it looked the same for `settle_seconds` (two looks at least):
    a copy still running changes its size or modification time."""

    def __init__(self, settle_seconds: float) -> None:
        self.settle_seconds = settle_seconds
        self._first: dict[Path, tuple[Signature, float]] = {}

    def forget_all_but(self, present: Collection[Path]) -> None:
        """Discs gone from the inbox are forgotten (a disc that comes back starts over)."""
        for path in set(self._first) - set(present):
            del self._first[path]

    def settled(self, entry: Entry, now: float) -> bool:
        seen = self._first.get(entry.path)
        if seen is None or seen[0] != entry.signature:
            self._first[entry.path] = (entry.signature, now)
            return False
        return now - seen[1] >= self.settle_seconds


def staged_name(n: int, disc_path: str) -> str:
    base = normalise(disc_path).rsplit("/", 1)[-1]
    return f"{n:06d}-{re.sub(r'[^A-Za-z0-9._-]', '_', base)[:80]}"


async def ingest_disc(
    disc: OpenDisc,
    *,
    store: DiscStore,
    publish: Publish,
    staging: Path,
    batch_size: int,
    survey: Survey,
) -> None:
    """Read the disc's files into staging and emit them; resumable (recorded files are
    skipped). An unreadable disc fails its task with the reason; unreadable files are
    reported. Raises `Stopped` when the task is paused or cancelled: before the survey or
    the next batch."""
    source = Path(disc.source_path)
    await store.go_on(disc.task_id)  # before the survey, the first long step
    try:
        _, plan = await survey(str(source))  # isolated: the untrusted structure, first
        reader = await asyncio.to_thread(open_disc, source)  # then, known safe, to copy out
    except (DamagedDisc, PermanentError, OSError) as exc:
        await _fail(disc, store, str(exc))
        return
    try:
        files = await asyncio.to_thread(reader.files)
        problems = await _emit(disc, reader, files, plan, store, publish, staging, batch_size)
    except DamagedDisc as exc:
        await _fail(disc, store, str(exc))
        return
    finally:
        await asyncio.to_thread(reader.close)
    await store.finish(disc.task_id, _scan_report(plan, problems))
    log.info("disc read", task_id=disc.task_id, source=str(source), files=len(plan.files))


async def _fail(disc: OpenDisc, store: DiscStore, reason: str) -> None:
    await store.fail(disc.task_id, reason, _scan_report(None, [Problem("", reason)]))


async def _emit(
    disc: OpenDisc,
    reader: Disc,
    files: dict[str, int],
    plan: Plan,
    store: DiscStore,
    publish: Publish,
    staging: Path,
    batch_size: int,
) -> list[Problem]:
    problems = list(plan.problems)
    done = await store.recorded(disc.task_id)
    batch: list[NewFile] = []

    async def flush() -> None:
        if batch:  # the staged copies are durable before the ledger says they exist
            await asyncio.to_thread(sync_folder, staging)
        rows = await store.record(disc.task_id, batch)
        await publish([discovered_event(r) for r in rows])
        batch.clear()

    for n, path in enumerate(plan.files):
        target = staging / disc.task_id / staged_name(n, path)
        uri = file_url(target)
        if uri in done:
            continue
        if not batch:  # a batch starts: not for a paused or cancelled task
            await store.go_on(disc.task_id)
        try:
            size = await asyncio.to_thread(copy_out, reader, path, files[path], target)
        except UnreadableFile as exc:
            problems.append(Problem(path, f"unreadable: {exc}"))
            continue
        origin = f"{disc.source_path}!/{path}"
        batch.append(NewFile(SOURCE, uri, origin, size, uuid.uuid4().hex, disc.task_id))
        if len(batch) >= batch_size:
            await flush()
    await flush()
    return problems


def _scan_report(plan: Plan | None, problems: list[Problem]) -> dict[str, Any]:
    return {
        "mode": plan.mode if plan else "unreadable",
        "files": len(plan.files) if plan else 0,
        "not_dicom": plan.not_dicom if plan else 0,
        "problems": [asdict(p) for p in problems],
    }


async def finalize_disc(
    disc: OpenDisc, *, store: DiscStore, processed: Path, failed: Path, staging: Path
) -> Path:
    """Move a done disc to processed/ (read whole, every file stored) or failed/, write its
    report beside it, drop its staged files. Safe to repeat after a crash."""
    counters = await store.counters(disc.task_id)
    clean = disc.task_status == "completed" and not disc.scan.get("problems")
    ok = clean and counters.failed == 0
    source = Path(disc.source_path)
    if disc.moved_to is None:
        dest = _free_name((processed if ok else failed) / source.name, disc.task_id)
        await store.plan_move(disc.task_id, str(dest))
    else:
        dest = Path(disc.moved_to)
    if source.exists() and not dest.exists():
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.move, source, dest)
    report = {
        "task_id": disc.task_id,
        "source": disc.source_path,
        "moved_to": str(dest),
        "outcome": "processed" if dest.parent == processed else "failed",
        "task_status": disc.task_status,
        "error": disc.task_error,
        "read": disc.scan,
        "counters": asdict(counters),
        "finished_at": datetime.now(UTC).isoformat(),
    }
    body = json.dumps(report, indent=2, ensure_ascii=False).encode()
    await asyncio.to_thread(write_chunks, dest.with_name(dest.name + ".report.json"), [body])
    await asyncio.to_thread(shutil.rmtree, staging / disc.task_id, True)
    await store.finalize(disc.task_id)
    log.info("disc done", task_id=disc.task_id, moved_to=str(dest), outcome=report["outcome"])
    return dest


def _free_name(dest: Path, task_id: str) -> Path:
    """A name not taken yet in the destination folder (the same disc may come twice)."""
    return dest if not dest.exists() else dest.with_name(f"{dest.name}.{task_id[:8]}")


async def run_round(
    *,
    inbox: Path,
    settler: Settler,
    store: DiscStore,
    publish: Publish,
    staging: Path,
    processed: Path,
    failed: Path,
    batch_size: int,
    survey: Survey,
) -> None:
    """New settled discs become tasks; unread discs are read; done discs are moved out."""
    tracked = {Path(d.source_path) for d in await store.open_discs()}
    now = asyncio.get_running_loop().time()
    entries = await asyncio.to_thread(inbox_entries, inbox, {processed, failed})
    settler.forget_all_but([e.path for e in entries])
    for entry in entries:
        if entry.path not in tracked and settler.settled(entry, now):
            task_id = await store.create(str(entry.path), entry.kind)
            log.info("disc found", task_id=task_id, source=str(entry.path), kind=entry.kind)
    for disc in await store.open_discs():
        if not disc.scan_completed and disc.task_status in EMITTING:
            try:
                await ingest_disc(
                    disc,
                    store=store,
                    publish=publish,
                    staging=staging,
                    batch_size=batch_size,
                    survey=survey,
                )
            except Stopped as stop:  # resumed: read again from where it stopped
                log.info("disc reading stopped", task_id=disc.task_id, why=stop.why)
    for disc in await store.open_discs():
        if disc.task_status in DONE:
            await finalize_disc(
                disc, store=store, processed=processed, failed=failed, staging=staging
            )
