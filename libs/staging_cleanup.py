"""Staged copies are removed once the pipeline is done with them.

A source that stages what it receives (the DICOM receiver; the PACS watcher's C-GET) keeps
each file until its ledger row is final, then for a while longer:
- indexed or duplicate: `Retention.done` (default a day; the storage holds the instance);
- failed or conflict: `Retention.kept` (default 30 days; replaying a dead letter needs it).
Progress is a watermark per staging owner and kind (`staging_cleanup`), so a restart
resumes where it stopped and a round never rereads the whole ledger. Only files under the
staging root are ever deleted, whatever a ledger URI says.

Hour folders (`YYYYMMDDHH`, the receiver's layout) older than `Retention.kept` are then
removed with whatever is left in them: files of an association cut mid-instance, never
acknowledged and never recorded, which no ledger row would ever name.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg
from prometheus_client import Counter

from libs.db import staging_cleanup as db
from libs.logging import get_logger
from libs.runtime import Runtime
from libs.settings import StagingSettings

log = get_logger(__name__)
HOUR_FOLDER = "%Y%m%d%H"


@dataclass(frozen=True)
class Retention:
    done: timedelta = timedelta(days=1)
    kept: timedelta = timedelta(days=30)

    @classmethod
    def of(cls, settings: StagingSettings) -> Retention:
        return cls(
            done=timedelta(hours=settings.keep_done_hours),
            kept=timedelta(days=settings.keep_failed_days),
        )


def staged_path(uri: str, root: Path) -> Path | None:
    """The file a ledger URI names when it is a `file://` URI inside `root`, else None."""
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        return None
    path = Path(unquote(parts.path))
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if real == real_root or not Path(real).is_relative_to(real_root):
        return None
    return path


def remove_files(paths: list[Path]) -> tuple[int, int]:
    """Unlink each (gone already is fine); returns (files, bytes) removed."""
    files = size = 0
    for path in paths:
        try:
            st = path.lstat()
            path.unlink()
        except FileNotFoundError:
            continue
        files, size = files + 1, size + st.st_size
    return files, size


def sweep_hour_folders(root: Path, before: datetime) -> int:
    """Remove hour folders older than `before` (their hour ended before it); returns the
    number of files they still held."""
    removed = 0
    if not root.is_dir():
        return 0
    for folder in root.iterdir():
        try:
            hour = datetime.strptime(folder.name, HOUR_FOLDER).replace(tzinfo=UTC)
        except ValueError:
            continue  # not ours
        if folder.is_symlink() or not folder.is_dir() or hour + timedelta(hours=1) > before:
            continue
        removed += sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder)  # does not follow symlinks
    return removed


class StagingCleanup:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        owner: str,
        root: Path,
        source_like: str,
        retention: Retention,
        removed: Counter,
        hour_folders: bool = False,
        batch: int = 1000,
    ) -> None:
        self.pool = pool
        self.owner = owner
        self.root = root.absolute()
        self.source_like = source_like
        self.retention = retention
        self.removed = removed  # labels: kind (done, kept, orphan)
        self.hour_folders = hour_folders
        self.batch = batch
        for kind in ("done", "kept", "orphan"):
            removed.labels(kind)

    async def round(self, now: datetime | None = None) -> int:
        """One pass; returns the number of files removed."""
        now = now or datetime.now(UTC)
        total = 0
        for kind, keep in (("done", self.retention.done), ("kept", self.retention.kept)):
            total += await self._finished(kind, now - keep)
        if self.hour_folders:
            orphans = await asyncio.to_thread(
                sweep_hour_folders, self.root, now - self.retention.kept
            )
            self.removed.labels("orphan").inc(orphans)
            total += orphans
        if total:
            log.info("staged files removed", owner=self.owner, files=total)
        return total

    async def _finished(self, kind: str, older_than: datetime) -> int:
        total = 0
        while True:
            async with self.pool.acquire() as conn:
                rows = await db.finished_since(
                    conn,
                    self.owner,
                    kind,
                    source_like=self.source_like,
                    older_than=older_than,
                    limit=self.batch,
                )
            if not rows:
                return total
            paths = [p for r in rows if (p := staged_path(r.uri, self.root)) is not None]
            files, _ = await asyncio.to_thread(remove_files, paths)
            async with self.pool.acquire() as conn:
                await db.advance(conn, self.owner, kind, rows[-1])
            self.removed.labels(kind).inc(files)
            total += files
            if len(rows) < self.batch:
                return total

    async def run(self, rt: Runtime, interval: float) -> None:
        """A round every `interval` seconds until the service stops."""
        while True:
            try:
                await self.round()
            except Exception as exc:  # database away and the like: next round
                log.warning("staging cleanup failed", owner=self.owner, error=repr(exc))
            if not await rt.sleep(interval):
                return
