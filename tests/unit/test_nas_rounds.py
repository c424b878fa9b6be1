"""The NAS watcher's rounds with an in-memory store: incremental scans, import tasks, and
the periodic rounds around them (the watched roots under their lock, the task lease)."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from libs.contracts.events import Event, FileDiscovered
from libs.db.ledger import LedgerRow, NewFile
from libs.db.tasks import Task
from libs.runtime.periodic import AT_ONCE
from services.nas_watcher.rounds import run_task, scan_root, scan_roots, scan_task
from services.nas_watcher.scanner import FileStat

ids = itertools.count(1)


class FakeStore:
    def __init__(self) -> None:
        self.seen_state: dict[str, dict[str, tuple[int, int]]] = {}
        self.task_uris: set[tuple[str | None, str]] = set()
        self.failed: dict[str, str] = {}
        self.finished: list[str] = []

    def _rows(self, new: Sequence[NewFile]) -> list[LedgerRow]:
        rows = []
        for f in new:
            if f.task_id is not None and (f.task_id, f.uri) in self.task_uris:
                continue
            self.task_uris.add((f.task_id, f.uri))
            rows.append(
                LedgerRow(next(ids), f.source, f.uri, f.origin, f.size, f.correlation_id, f.task_id)
            )
        return rows

    async def seen(self, directory: str) -> dict[str, tuple[int, int]]:
        return dict(self.seen_state.get(directory, {}))

    async def record_watched(
        self, directory: str, files: Sequence[FileStat], new: Sequence[NewFile]
    ) -> list[LedgerRow]:
        for f in files:
            self.seen_state.setdefault(directory, {})[f.name] = (f.size, f.mtime_ns)
        return self._rows(new)

    async def record_task_files(self, new: Sequence[NewFile]) -> list[LedgerRow]:
        return self._rows(new)

    async def record_task_failures(self, task_id: str, new: Sequence[NewFile], reason: str) -> None:
        for row in self._rows(new):
            self.failed[row.uri] = reason

    async def renew(self, task_id: str) -> bool:
        return True

    async def finish(self, task_id: str) -> None:
        self.finished.append(task_id)

    async def fail(self, task_id: str, error: str) -> None:
        self.failed[task_id] = error


class Published(list[Event]):
    def __init__(self, then: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.then = then  # what happens once a batch is out (an operator's click)

    async def __call__(self, events: Sequence[Event]) -> None:
        self.extend(events)
        if self.then is not None:
            self.then()


def make_files(root: Path, n: int) -> None:
    old = 1_600_000_000
    for i in range(n):
        path = root / f"P{i % 3}" / f"{i}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (i + 1))
        os.utime(path, (old, old))


async def test_rescanning_an_unchanged_tree_emits_nothing(tmp_path: Path) -> None:
    make_files(tmp_path, 12)
    store, published = FakeStore(), Published()
    first = await scan_root(tmp_path, store=store, publish=published, settle_seconds=2)
    assert first.emitted == 12 and len(published) == 12
    again = await scan_root(tmp_path, store=store, publish=published, settle_seconds=2)
    assert again.emitted == 0 and again.files_seen == 12 and len(published) == 12


async def test_changed_file_is_emitted_again_once_settled(tmp_path: Path) -> None:
    make_files(tmp_path, 3)
    store, published = FakeStore(), Published()
    await scan_root(tmp_path, store=store, publish=published, settle_seconds=0.2)
    target = tmp_path / "P0" / "0.dcm"
    target.write_bytes(b"grown while being copied")
    os.utime(target, (1_600_000_100, 1_600_000_100))
    report = await scan_root(tmp_path, store=store, publish=published, settle_seconds=0.2)
    assert report.emitted == 1 and report.unsettled == 0
    event = published[-1]
    assert isinstance(event, FileDiscovered)
    assert event.file.uri == target.as_uri() and event.file.size == len(b"grown while being copied")


def task(path: Path) -> Task:
    now = datetime.now(UTC)
    return Task("t1", "folder", str(path), "", "running", None, False, None, now, now, None, now)


async def test_import_task_emits_every_file_once_even_when_resumed(tmp_path: Path) -> None:
    make_files(tmp_path / "imports" / "batch", 7)
    store, published = FakeStore(), Published()
    roots = [tmp_path / "imports"]
    t = task(tmp_path / "imports" / "batch")
    await scan_task(
        t, store=store, publish=published, allowed_roots=roots, settle_seconds=0, batch_size=3
    )
    await scan_task(t, store=store, publish=published, allowed_roots=roots, settle_seconds=0)
    assert len(published) == 7
    assert store.finished == ["t1", "t1"]
    assert {e.file.task_id for e in published if isinstance(e, FileDiscovered)} == {"t1"}


async def test_import_outside_the_allowed_roots_fails_the_task(tmp_path: Path) -> None:
    store, published = FakeStore(), Published()
    for path in [tmp_path / "elsewhere", tmp_path / "imports" / ".." / "elsewhere"]:
        await scan_task(
            task(path),
            store=store,
            publish=published,
            allowed_roots=[tmp_path / "imports"],
            settle_seconds=0,
        )
        assert "outside the allowed import roots" in store.failed["t1"]
    (tmp_path / "imports").mkdir()
    await scan_task(
        task(tmp_path / "imports" / "missing"),
        store=store,
        publish=published,
        allowed_roots=[tmp_path / "imports"],
        settle_seconds=0,
    )
    assert "does not exist" in store.failed["t1"]
    assert published == []


# --- the periodic rounds ---------------------------------------------------------------


class TaskStore(FakeStore):
    """Import tasks with leases: pausing or cancelling a task clears its lease (as
    `libs.db.tasks` does), and a renewal then fails."""

    def __init__(self, *queued: Task) -> None:
        super().__init__()
        self.queued = list(queued)
        self.leased: set[str] = set()
        self.calls: list[str] = []

    async def lease_next(self) -> Task | None:
        if not self.queued:
            return None
        task = self.queued.pop(0)
        self.leased.add(task.id)
        return task

    async def renew(self, task_id: str) -> bool:
        self.calls.append("renew")
        return task_id in self.leased

    async def record_task_files(self, new: Sequence[NewFile]) -> list[LedgerRow]:
        self.calls.append("record")
        return await super().record_task_files(new)

    def clear_lease(self, task_id: str) -> None:
        self.leased.discard(task_id)


def runner(
    store: TaskStore, published: Published, root: Path, **options: float
) -> Callable[[], object]:
    return partial(
        run_task,
        store,
        published,
        asyncio.Event(),
        lease_seconds=options.get("lease_seconds", 60.0),
        allowed_roots=[root],
        settle_seconds=options.get("settle_seconds", 0.0),
        batch_size=int(options.get("batch_size", 500)),
        idle_seconds=options.get("idle_seconds", 60.0),
    )


async def test_run_task_leases_the_task_and_scans_it_to_the_end(tmp_path: Path) -> None:
    make_files(tmp_path / "batch", 7)
    store, published = TaskStore(task(tmp_path / "batch")), Published()
    assert await runner(store, published, tmp_path, batch_size=3)() == AT_ONCE
    assert store.finished == ["t1"] and store.queued == []
    assert len(published) == 7
    assert {e.file.task_id for e in published if isinstance(e, FileDiscovered)} == {"t1"}


async def test_run_task_renews_the_lease_while_a_scan_waits_for_files_to_settle(
    tmp_path: Path,
) -> None:
    """A scan longer than its lease keeps it: renewed every third of the lease meanwhile."""
    make_files(tmp_path / "batch", 2)
    store, published = TaskStore(task(tmp_path / "batch")), Published()
    run = runner(store, published, tmp_path, lease_seconds=0.3, settle_seconds=0.6)
    assert await run() == AT_ONCE
    assert len(published) == 2 and store.finished == ["t1"]
    # The renewals while the files settle, then the one before the batch is recorded.
    assert store.calls.index("record") >= 3, store.calls


@pytest.mark.parametrize("action", ["paused", "cancelled"])
async def test_run_task_a_scan_stops_when_its_task_is_paused_or_cancelled_mid_scan(
    tmp_path: Path, action: str
) -> None:
    """Either clears the lease: the batch after the click is neither recorded nor emitted,
    the task is not finished, and the round goes on at once (to the next task)."""
    make_files(tmp_path / "batch", 9)
    store = TaskStore(task(tmp_path / "batch"))
    published = Published(then=lambda: store.clear_lease("t1"))  # after the first batch
    assert await runner(store, published, tmp_path, batch_size=2)() == AT_ONCE
    assert store.calls.count("record") == 1, store.calls
    assert 2 <= len(published) < 9
    assert {e.file.task_id for e in published if isinstance(e, FileDiscovered)} == {"t1"}
    assert store.finished == []


async def test_run_task_a_failing_scan_waits_the_interval_and_leaves_the_task(
    tmp_path: Path,
) -> None:
    """The lease then expires and the scan resumes, idempotently, on some replica."""
    make_files(tmp_path / "batch", 3)
    store = TaskStore(task(tmp_path / "batch"))

    async def away(events: Sequence[Event]) -> None:
        raise ConnectionError("broker away")

    run = partial(
        run_task, store, away, asyncio.Event(), lease_seconds=60.0, allowed_roots=[tmp_path],
        settle_seconds=0.0, batch_size=500,
    )  # fmt: skip
    assert await run() is None
    assert store.finished == []


async def test_run_task_without_a_database_waits_the_interval(tmp_path: Path) -> None:
    class Away(TaskStore):
        async def lease_next(self) -> Task | None:
            raise ConnectionError("database away")

    assert await runner(Away(), Published(), tmp_path)() is None


async def test_run_task_with_no_task_waits_until_an_import_is_requested(tmp_path: Path) -> None:
    wake = asyncio.Event()

    class Idle(TaskStore):
        async def lease_next(self) -> Task | None:
            # Set once the round waits (it clears `wake` first): an ImportRequested arriving.
            asyncio.get_running_loop().call_soon(wake.set)
            return None

    run = partial(
        run_task, Idle(), Published(), wake, lease_seconds=60.0, allowed_roots=[tmp_path],
        settle_seconds=0.0, batch_size=500, idle_seconds=60.0,
    )  # fmt: skip
    assert await asyncio.wait_for(run(), timeout=10) == AT_ONCE


class Locks:
    """Advisory locks across replicas: a root in `taken` is another replica's."""

    def __init__(self, *taken: Path) -> None:
        self.taken = {str(p) for p in taken}
        self.asked: list[str] = []

    def __call__(self, name: str) -> Locks.Held:
        self.asked.append(name)
        return Locks.Held(name not in self.taken)

    class Held:
        def __init__(self, mine: bool) -> None:
            self.mine = mine

        @asynccontextmanager
        async def held(self) -> AsyncIterator[bool]:
            yield self.mine


async def test_scan_roots_scans_each_root_it_holds_and_survives_a_failing_one(
    tmp_path: Path,
) -> None:
    theirs, missing, broken, mine = (tmp_path / n for n in ("theirs", "missing", "broken", "mine"))
    make_files(theirs, 2)
    make_files(broken, 2)
    make_files(mine, 4)

    class Store(FakeStore):
        async def seen(self, directory: str) -> dict[str, tuple[int, int]]:
            if directory.startswith(str(broken)):
                raise ConnectionError("database away")
            return await super().seen(directory)

    registry = CollectorRegistry()
    scans = Counter("scans", "", ["root"], registry=registry)
    files_seen = Gauge("files_seen", "", ["root"], registry=registry)
    store, published, locks = Store(), Published(), Locks(theirs)
    await scan_roots(
        [theirs, missing, broken, mine], store=store, publish=published, settle_seconds=0,
        exclusive=locks, scans=scans, files_seen=files_seen,
    )  # fmt: skip
    assert sorted({e.file.uri for e in published if isinstance(e, FileDiscovered)}) == sorted(
        p.as_uri() for p in mine.rglob("*.dcm")
    )
    assert str(mine) in locks.asked and str(theirs) in locks.asked
    count = registry.get_sample_value
    assert count("scans_total", {"root": str(mine)}) == 1
    assert count("files_seen", {"root": str(mine)}) == 4
    for other in (theirs, missing, broken):
        assert count("scans_total", {"root": str(other)}) is None
