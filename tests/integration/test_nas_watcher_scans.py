"""The NAS watcher against hostile or unlucky folders: symbolic links never lead an import
task or a watched scan out of the roots (the task's failures name the link without saying
where it leads or whether that exists), and a file still being copied is never emitted."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from libs.contracts.events import Event, FileDiscovered
from libs.db import tasks
from services.nas_watcher.bootstrap import PgScanStore
from services.nas_watcher.rounds import OUTSIDE_ROOTS, scan_root, scan_task
from tests.polling import eventually


class Published(list[Event]):
    async def __call__(self, events: Sequence[Event]) -> None:
        self.extend(events)


def hostile_tree(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "nas", tmp_path / "etc"
    (root / "batch" / "S1").mkdir(parents=True)
    (root / "shared").mkdir()
    outside.mkdir()
    (outside / "shadow").write_bytes(b"root:*:19000")
    for path in (root / "batch" / "S1" / "a.dcm", root / "shared" / "b.dcm"):
        path.write_bytes(b"x" * 10)
        os.utime(path, (1_600_000_000, 1_600_000_000))
    os.utime(outside / "shadow", (1_600_000_000, 1_600_000_000))
    (root / "batch" / "etc").symlink_to(outside)
    (root / "batch" / "S1" / "shadow.dcm").symlink_to(outside / "shadow")
    (root / "batch" / "S1" / "probe.dcm").symlink_to(outside / "does-not-exist")
    (root / "batch" / "shared").symlink_to(root / "shared")  # inside the roots: followed
    return root, outside


async def test_import_task_does_not_follow_links_out_of_the_roots(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    root, outside = hostile_tree(tmp_path)
    async with pool.acquire() as conn:
        await tasks.create_task(conn, source_path=str(root / "batch"))
    store, published = PgScanStore(pool, "test", 60), Published()
    task = await store.lease_next()
    assert task is not None and task.source_path == str(root / "batch")
    assert await store.renew(task.id)
    await scan_task(task, store=store, publish=published, allowed_roots=[root], settle_seconds=0)
    uris = {e.file.uri for e in published if isinstance(e, FileDiscovered)}
    assert uris == {
        (root / "batch" / "S1" / "a.dcm").as_uri(),
        (root / "batch" / "shared" / "b.dcm").as_uri(),
    }
    async with pool.acquire() as conn:
        counters = await tasks.task_counters(conn, task.id)
    links = {"etc", "S1/shadow.dcm", "S1/probe.dcm"}
    assert counters.failed == 3
    assert {os.path.relpath(f["origin"], root / "batch") for f in counters.failures} == links
    assert {f["reason"] for f in counters.failures} == {OUTSIDE_ROOTS}
    assert str(outside) not in repr(counters.failures)  # nothing says where a link leads


async def test_watched_scan_does_not_follow_links_out_of_the_roots(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    root, _ = hostile_tree(tmp_path)
    store, published = PgScanStore(pool, "test", 60), Published()
    report = await scan_root(root, store=store, publish=published, settle_seconds=0, roots=[root])
    found = [Path(e.origin).name for e in published if isinstance(e, FileDiscovered)]
    assert sorted(found) == ["a.dcm", "b.dcm"]  # b.dcm once, through the link or not
    assert len(report.problems.escaping_links) == 3


class SlowCopy(threading.Thread):
    """A copy that keeps the source's old modification time while it writes (Windows
    Explorer over SMB, `cp -p`, `rsync -a --inplace`): the mtime alone never shows it growing."""

    def __init__(self, target: Path, chunks: int, chunk_size: int, pause: float) -> None:
        super().__init__(daemon=True)
        self.target, self.chunks, self.chunk_size, self.pause = target, chunks, chunk_size, pause
        self.size = chunks * chunk_size

    def run(self) -> None:
        with self.target.open("wb") as f:
            for i in range(self.chunks):
                f.write(bytes([i % 251]) * self.chunk_size)
                f.flush()
                os.utime(self.target, (1_600_000_000, 1_600_000_000))
                time.sleep(self.pause)


async def test_watched_file_copied_with_its_old_mtime_is_emitted_once_complete(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    root = tmp_path / "nas"
    root.mkdir()
    copy = SlowCopy(root / "big.dcm", chunks=40, chunk_size=1 << 20, pause=0.1)
    store, published = PgScanStore(pool, "test", 60), Published()
    copy.start()

    async def scanned_until_copied() -> bool:  # rounds keep coming while the copy grows
        await scan_root(root, store=store, publish=published, settle_seconds=1.0)
        return not copy.is_alive()

    await eventually(scanned_until_copied, 60, what="the copy did not finish", interval=0)
    copy.join()
    for _ in range(2):  # the copy is complete: the next scans see it settled, then unchanged
        await scan_root(root, store=store, publish=published, settle_seconds=1.0)
    sizes = [e.file.size for e in published if isinstance(e, FileDiscovered)]
    assert sizes == [copy.size]


async def test_import_of_a_file_copied_with_its_old_mtime_waits_until_complete(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    root = tmp_path / "nas"
    (root / "batch").mkdir(parents=True)
    copy = SlowCopy(root / "batch" / "big.dcm", chunks=40, chunk_size=1 << 20, pause=0.1)
    async with pool.acquire() as conn:
        await tasks.create_task(conn, source_path=str(root / "batch"))
    store, published = PgScanStore(pool, "test", 60), Published()
    task = await store.lease_next()
    assert task is not None and task.source_path == str(root / "batch")
    assert await store.renew(task.id)
    copy.start()
    await eventually(  # the copy has begun: the scan meets a file still growing
        lambda: copy.target.exists() and copy.target.stat().st_size > 0, 10, interval=0.01
    )
    await scan_task(task, store=store, publish=published, allowed_roots=[root], settle_seconds=1.0)
    copy.join()
    sizes = [e.file.size for e in published if isinstance(e, FileDiscovered)]
    assert sizes == [copy.size]
