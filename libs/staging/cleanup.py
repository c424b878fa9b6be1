"""Staged copies are removed once the pipeline is done with them.

A source that stages what it receives (the DICOM receiver; the PACS watcher's C-GET) keeps
each file until its ledger row is final, then for a while longer:
- indexed or duplicate: `Retention.done` (default a day; the storage holds the instance);
- failed or conflict: `Retention.kept` (default 30 days; replaying a dead letter needs it).
Progress is a watermark per staging owner and kind (`staging_cleanup`), so a restart
resumes where it stopped and a round never rereads the whole ledger. Only files under the
staging root are ever deleted, whatever a ledger URI says.

Hour folders (`YYYYMMDDHH`, the receiver's layout) older than `Retention.kept` are then
emptied of what no ledger row still needs (files of an association cut mid-instance, never
acknowledged and never recorded; copies whose row went elsewhere) and removed once empty; a
file whose row is still pending, or final but within its retention, stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg
from prometheus_client import Counter

from libs.contracts.settings import StagingSettings
from libs.db import staging_cleanup as db
from libs.runtime.logging import get_logger
from libs.runtime.service import Runtime

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
    try:
        real, real_root = os.path.realpath(path), os.path.realpath(root)
    except ValueError:  # a NUL in the path
        return None
    if real == real_root or not Path(real).is_relative_to(real_root):
        return None
    return path


def remove_files(paths: list[Path]) -> tuple[int, int]:
    """Unlink each (gone already is fine; one that cannot go is logged and skipped, so a
    bad row never stops the cleanup); returns (files, bytes) removed."""
    files = size = 0
    for path in paths:
        try:
            st = path.lstat()
            path.unlink()
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            log.warning("staged file not removed", path=str(path), error=repr(exc))
            continue
        files, size = files + 1, size + st.st_size
    return files, size


def old_hour_folders(root: Path, before: datetime) -> dict[Path, list[Path]]:
    """Hour folders whose hour ended before `before`, with the files in them."""
    out: dict[Path, list[Path]] = {}
    if not root.is_dir():
        return out
    for folder in root.iterdir():
        try:
            hour = datetime.strptime(folder.name, HOUR_FOLDER).replace(tzinfo=UTC)
        except ValueError:
            continue  # not ours
        if folder.is_symlink() or not folder.is_dir() or hour + timedelta(hours=1) > before:
            continue
        out[folder] = [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()]
    return out


def remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


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
            total += await self._sweep(now)
        if total:
            log.info("staged files removed", owner=self.owner, files=total)
        return total

    async def _sweep(self, now: datetime) -> int:
        """Old hour folders: remove what no ledger row still needs, then the empty folder."""
        folders = await asyncio.to_thread(old_hour_folders, self.root, now - self.retention.kept)
        total = 0
        for folder, files in folders.items():
            for i in range(0, len(files), self.batch):
                chunk = {f.as_uri(): f for f in files[i : i + self.batch]}
                async with self.pool.acquire() as conn:
                    needed = await db.still_needed(
                        conn,
                        list(chunk),
                        done_before=now - self.retention.done,
                        kept_before=now - self.retention.kept,
                    )
                orphans = [path for uri, path in chunk.items() if uri not in needed]
                removed, _ = await asyncio.to_thread(remove_files, orphans)
                self.removed.labels("orphan").inc(removed)
                total += removed
            await asyncio.to_thread(remove_if_empty, folder)
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
