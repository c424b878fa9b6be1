"""The NAS watcher's rounds with an in-memory store: incremental scans and import tasks."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from libs.contracts.events import Event, FileDiscovered
from libs.db.ledger import LedgerRow, NewFile
from libs.db.tasks import Task
from services.nas_watcher.rounds import scan_root, scan_task
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
    async def __call__(self, events: Sequence[Event]) -> None:
        self.extend(events)


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
