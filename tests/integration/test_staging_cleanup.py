"""Staged copies go once the pipeline is done with them, each after its retention, never
outside the staging root; progress survives a restart; orphans go with their hour folder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry, Counter

from libs.db import ledger
from libs.db.ledger import NewFile
from libs.staging.cleanup import Retention, StagingCleanup, staged_path

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
RETENTION = Retention(done=timedelta(hours=24), kept=timedelta(days=30))


async def staged(
    pool: asyncpg.Pool, path: Path, status: str | None, finished: datetime, source: str = "dicom:A"
) -> None:
    """A staged file and its ledger row, final with `status` at `finished` (None: pending)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 10)
    async with pool.acquire() as conn:
        [row] = await ledger.record_discovered(
            conn, [NewFile(source, path.as_uri(), "A@127.0.0.1:1", 10, "assoc")]
        )
        if status is not None:
            await ledger.mark_outcome(conn, row.id, status, stage="test", task_id=None)
            await conn.execute(
                "UPDATE ingest_files SET finished_at = $2 WHERE id = $1", row.id, finished
            )


def cleanup(pool: asyncpg.Pool, root: Path, registry: CollectorRegistry) -> StagingCleanup:
    removed = Counter("removed_total", "files removed", ["kind"], registry=registry)
    return StagingCleanup(
        pool,
        owner=f"test:{root}",
        root=root,
        source_like="dicom:%",
        retention=RETENTION,
        removed=removed,
        hour_folders=True,
        batch=2,  # several pages per round
    )


async def test_each_final_file_goes_after_its_retention(pool: asyncpg.Pool, tmp_path: Path) -> None:
    root = tmp_path / "staging"
    hour = root / "2026112311"
    old_done = [hour / f"done{i}.dcm" for i in range(3)]
    for p in old_done:
        await staged(pool, p, "indexed", NOW - timedelta(hours=25))
    await staged(pool, hour / "dup.dcm", "duplicate", NOW - timedelta(days=2))
    await staged(pool, hour / "recent.dcm", "indexed", NOW - timedelta(hours=1))
    await staged(pool, hour / "failed.dcm", "failed", NOW - timedelta(days=2))
    await staged(pool, hour / "pending.dcm", None, NOW)
    await staged(pool, tmp_path / "elsewhere" / "a.dcm", "indexed", NOW - timedelta(days=2))
    await staged(pool, hour / "other-source.dcm", "indexed", NOW - timedelta(days=2), "nas:x")

    registry = CollectorRegistry()
    assert await cleanup(pool, root, registry).round(NOW) == 4
    left = sorted(p.name for p in hour.iterdir())
    assert left == ["failed.dcm", "other-source.dcm", "pending.dcm", "recent.dcm"]
    assert (tmp_path / "elsewhere" / "a.dcm").exists()  # outside the root: never touched
    assert registry.get_sample_value("removed_total", {"kind": "done"}) == 4

    # A new run (a restart) resumes from the watermark; the failed copy goes after 30 days.
    later = NOW + timedelta(days=31)
    assert await cleanup(pool, root, CollectorRegistry()).round(later) >= 2
    assert not (hour / "failed.dcm").exists() and not (hour / "recent.dcm").exists()


async def test_old_hour_folders_lose_only_what_no_row_needs(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    root = tmp_path / "staging"
    old, young, busy = root / "2026102100", root / "2026112311", root / "2026102101"
    for folder in (old, young, busy):
        folder.mkdir(parents=True)
        (folder / "cut-mid-instance.dcm").write_bytes(b"partial")  # no ledger row
    await staged(pool, busy / "pending.dcm", None, NOW)  # a 33-day backlog: still needed
    await staged(pool, busy / "failed.dcm", "failed", NOW - timedelta(days=3))  # retained
    (root / "not-an-hour").mkdir()
    registry = CollectorRegistry()
    assert await cleanup(pool, root, registry).round(NOW) == 2
    assert not old.exists() and young.exists() and (root / "not-an-hour").exists()
    assert sorted(p.name for p in busy.iterdir()) == ["failed.dcm", "pending.dcm"]
    assert registry.get_sample_value("removed_total", {"kind": "orphan"}) == 2


async def test_a_file_that_cannot_go_does_not_stop_the_cleanup(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    root = tmp_path / "staging"
    hour = root / "2026112300"
    await staged(pool, hour / "a.dcm", "indexed", NOW - timedelta(days=2))
    (hour / "a.dcm").unlink()
    (hour / "a.dcm").mkdir()  # the row now names a folder: unlink fails
    await staged(pool, hour / "b.dcm", "indexed", NOW - timedelta(days=2))
    async with pool.acquire() as conn:  # and a finished row whose URI holds a NUL
        [row] = await ledger.record_discovered(
            conn, [NewFile("dicom:A", "file:///x%00y.dcm", "A@127.0.0.1:1", 1, "assoc")]
        )
        await ledger.mark_outcome(conn, row.id, "indexed", stage="test", task_id=None)
        await conn.execute(
            "UPDATE ingest_files SET finished_at = $2 WHERE id = $1", row.id, NOW - timedelta(2)
        )
    assert await cleanup(pool, root, CollectorRegistry()).round(NOW) == 1
    assert not (hour / "b.dcm").exists() and (hour / "a.dcm").is_dir()


def test_only_file_uris_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    (root / "h").mkdir(parents=True)
    (root / "escape").symlink_to(tmp_path)
    assert staged_path((root / "h" / "a.dcm").as_uri(), root) == root / "h" / "a.dcm"
    assert staged_path((root / ".." / "x.dcm").as_uri(), root) is None
    assert staged_path((root / "escape" / "x.dcm").as_uri(), root) is None
    assert staged_path(root.as_uri(), root) is None
    assert staged_path("gs://bucket/h/a.dcm", root) is None
    assert staged_path("file://otherhost" + str(root / "h" / "a.dcm"), root) is None
    assert staged_path("file:///x%00y.dcm", root) is None
