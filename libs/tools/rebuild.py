"""`dicomflow rebuild-index`: the index rebuilt from what storage holds.

Walks every key of `STORAGE_URL` (`file://` or `gs://`) in ascending order, a batch at a
time. Each canonical copy (`studies/<study>/<series>/<sop>.dcm`), each conflicting copy
(`conflicts/<sop>/<content sha256>.dcm`) and each header correction
(`revisions/<sop>/<file sha256>.dcm`, restored as the instance's served revision after its
original, ADR 0025) is parsed and hashed by the extractor's own
`extract_file`, in the isolated parser pool (a hostile object costs one worker and is a
failure with its reason, never the run); previews, temporary files and any other object are
skipped and counted by kind. The batch is then indexed by the indexer's own writes
(`libs.db.rebuild.index_object`) in one transaction that also moves the checkpoint, so a run
stopped at any moment resumes after the last committed batch. Memory stays bounded: one
batch of headers at a time, the listing is streamed, gs:// objects are downloaded one
batch at a time to a temporary folder and removed once parsed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import asyncpg

from libs.contracts.errors import PermanentError
from libs.contracts.events import DicomHeader, Hashes
from libs.db import Conn
from libs.db import rebuild as repo
from libs.db.locks import LockSpace, SingleReader
from libs.dicom.extract import extract_file
from libs.dicom.uids import is_valid_uid
from libs.runtime.sandbox import IsolatedExecutor
from libs.storage import ObjectStore, instance_key
from libs.storage.download import download
from libs.storage.local import LocalStore
from libs.tools.rebuild_report import Progress, report


@dataclass(frozen=True)
class Target:
    """A key that holds an instance: its UIDs as the key states them."""

    key: str
    sop_uid: str
    study_uid: str | None = None  # None for a conflicting copy or a revision (no study)
    series_uid: str | None = None
    revision: bool = False  # a header correction (`revisions/<sop>/<sha256>.dcm`, ADR 0025)

    @property
    def conflict(self) -> bool:
        return self.study_uid is None and not self.revision


def classify(key: str) -> Target | str:
    """The instance a key holds, or why it is skipped (the storage-writer's and the JPEG
    converter's key layouts: `libs.storage.base`, `libs.imaging.keys`)."""
    parts = key.split("/")
    name = parts[-1]
    if name.startswith("."):
        return "temporary file"
    if name.endswith(".jpg"):
        return "preview"
    if not name.endswith(".dcm"):
        return "not a DICOM object"
    stem = name.removesuffix(".dcm")
    if len(parts) == 4 and parts[0] == "studies" and all(map(is_valid_uid, [*parts[1:3], stem])):
        return Target(key, stem, parts[1], parts[2])
    if len(parts) == 3 and parts[0] == "conflicts" and is_valid_uid(parts[1]):
        return Target(key, parts[1])
    if len(parts) == 3 and parts[0] == "revisions" and is_valid_uid(parts[1]):
        return Target(key, parts[1], revision=True)
    return "outside the storage layout"


def check_uids(target: Target, header: DicomHeader) -> None:
    """The header must name the instance its key does (a misplaced object is not indexed)."""
    found = (header.study.study_uid, header.series.series_uid, header.instance.sop_instance_uid)
    wanted = (target.study_uid, target.series_uid, target.sop_uid)
    for what, got, want in zip(
        ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"), found, wanted, strict=True
    ):
        if want is not None and got != want:
            raise PermanentError(f"its {what} is {got}, but it is stored under {want}")


@dataclass(frozen=True)
class Parsed:
    target: Target
    size: int
    header: DicomHeader
    hashes: Hashes
    ahead: bool = False  # a revision's original, indexed before its own key comes


async def _batches(keys: AsyncIterator[str], size: int) -> AsyncIterator[list[str]]:
    batch: list[str] = []
    async for key in keys:
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class Rebuilder:
    def __init__(
        self, pool: asyncpg.Pool, store: ObjectStore, executor: IsolatedExecutor, batch_size: int
    ) -> None:
        self.pool = pool
        self.store = store
        self.executor = executor
        self.batch_size = batch_size
        self.local = store if isinstance(store, LocalStore) else None

    async def _parse(self, target: Target, tmp: Path) -> Parsed:
        if self.local is not None:
            path = self.local.path_for(target.key)
        else:
            path = tmp / f"{uuid.uuid4().hex}.dcm"
            await download(self.store, target.key, path)
        try:
            size = path.stat().st_size
            header, hashes = await self.executor.run(extract_file, str(path), False)
        finally:
            if self.local is None:
                path.unlink(missing_ok=True)
        check_uids(target, header)
        return Parsed(target, size, header, hashes)

    async def _one(self, key: str, tmp: Path, tally: repo.Tally) -> list[Parsed]:
        """The object parsed; for a revision, its instance's canonical copy before it (keys
        sort `revisions/` before `studies/`, and a correction applies to an indexed original:
        the original is indexed here, and counted when its own key comes)."""
        target = classify(key)
        if isinstance(target, str):
            tally.skipped[target] += 1
            return []
        try:
            parsed = await self._parse(target, tmp)
            if not target.revision:
                return [parsed]
            h = parsed.header
            uids = (h.study.study_uid, h.series.series_uid, h.instance.sop_instance_uid)
            original = Target(instance_key(*uids), uids[2], uids[0], uids[1])
            try:
                return [replace(await self._parse(original, tmp), ahead=True), parsed]
            except PermanentError:  # no original: the correction fails with that reason
                return [parsed]
        except PermanentError as exc:  # not DICOM, malformed, hostile, misplaced, gone
            tally.failures.append((key, f"{type(exc).__name__}: {exc}"))
            return []

    async def parse(self, keys: list[str]) -> tuple[list[Parsed], repo.Tally]:
        """A batch parsed in the worker pool (at most `workers` objects at a time). An I/O
        error that is not about one object stops the run; a restart does the batch again."""
        tally = repo.Tally()
        with tempfile.TemporaryDirectory(prefix="dicomflow-rebuild-") as tmp:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._one(k, Path(tmp), tally)) for k in keys]
        return [p for t in tasks for p in t.result()], tally

    async def write(
        self, run: repo.Run, keys: list[str], parsed: list[Parsed], tally: repo.Tally
    ) -> None:
        """Index a parsed batch and move the checkpoint past it, in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            for p in parsed:
                try:
                    outcome = await self._index(conn, run, p)
                except repo.DB_ERRORS as exc:
                    if not p.ahead:  # else the original fails again at its own key
                        tally.failures.append((p.target.key, f"{type(exc).__name__}: {exc}"))
                    continue
                if not p.ahead:  # an original is counted at its own key
                    tally.count(outcome)
            await repo.save_batch(conn, run.id, tally, keys[-1])

    async def _index(self, conn: Conn, run: repo.Run, p: Parsed) -> repo.Outcome:
        key = p.target.key
        url = self.store.url_for(key)
        if p.target.revision:
            return await repo.index_revision(
                conn, run.id, url=url, key=key, size=p.size, header=p.header, hashes=p.hashes
            )
        return await repo.index_object(
            conn,
            run.id,
            url=url,
            key=key,
            size=p.size,
            header=p.header,
            hashes=p.hashes,
            conflict=p.target.conflict,
        )

    async def walk(self, run: repo.Run) -> AsyncIterator[tuple[list[str], repo.Tally]]:
        """Every batch after the checkpoint, once committed. The next batch is parsed while
        the previous one is written (writes stay in key order: the checkpoint is a key)."""
        writing: asyncio.Task[None] | None = None
        previous: tuple[list[str], repo.Tally] | None = None
        try:
            async for keys in _batches(
                self.store.keys(start_after=run.checkpoint), self.batch_size
            ):
                parsed, tally = await self.parse(keys)
                if writing is not None and previous is not None:
                    await writing
                    yield previous
                writing = asyncio.create_task(self.write(run, keys, parsed, tally))
                previous = (keys, tally)
            if writing is not None and previous is not None:
                await writing
                yield previous
        finally:
            if writing is not None and not writing.done():
                writing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writing


async def _count(store: ObjectStore, progress: Progress, checkpoint: str, done: int) -> None:
    """The total for the ETA, by a second listing beside the walk; best effort (the walk
    itself reports a storage that cannot be listed)."""
    n = 0
    try:
        async for _ in store.keys(start_after=checkpoint):
            n += 1
    except Exception:  # without a total the progress line shows no ETA
        return
    progress.total = done + n


async def rebuild(
    pool: asyncpg.Pool,
    store: ObjectStore,
    executor: IsolatedExecutor,
    *,
    batch_size: int = 64,
    fresh: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Run (or resume) the rebuild of `store`; prints progress to `err` and the report to
    `out`. Returns 0 when every instance was indexed, 1 when some failed, 2 when another
    rebuild of this store is running."""
    async with SingleReader(pool, LockSpace.REBUILD_INDEX, store.url).held() as mine:
        if not mine:
            print(f"another rebuild-index of {store.url} is running", file=err)
            return 2
        async with pool.acquire() as conn:
            run = await repo.start_run(conn, store.url, fresh=fresh)
            before, failed_before = await repo.run_totals(conn, run.id)
        done = before.done + failed_before
        if run.resumed:
            print(f"resuming run {run.id} after {run.checkpoint or 'the start'}", file=err)
        progress = Progress(err, done)
        counter = asyncio.create_task(_count(store, progress, run.checkpoint, done))
        rebuilder = Rebuilder(pool, store, executor, batch_size)
        total, failed = before, failed_before
        started = time.monotonic()
        try:
            async for keys, t in rebuilder.walk(run):
                done += len(keys)
                _add(total, t)
                failed += len(t.failures)
                progress.show(done, total, failed)
        finally:
            counter.cancel()
        progress.show(done, total, failed, force=True)
        progress.close()
        async with pool.acquire() as conn:
            await repo.finish_run(conn, run.id)
            groups = await repo.failure_groups(conn, run.id)
        report(out, store.url, run, total, failed, groups, time.monotonic() - started)
        return 1 if failed else 0


def _add(total: repo.Tally, t: repo.Tally) -> None:
    total.indexed += t.indexed
    total.already_indexed += t.already_indexed
    total.conflicts += t.conflicts
    total.skipped.update(t.skipped)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rebuild-index",
        help="re-index every instance in storage (resumable; see docs/runbook.md)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--storage-url", help="file:// or gs:// (default: STORAGE_URL)")
    p.add_argument("--batch-size", type=int, default=64, help="objects per transaction")
    p.add_argument(
        "--workers", type=int, default=max(1, os.cpu_count() or 1), help="parser processes"
    )
    p.add_argument("--memory-limit-mb", type=int, default=1024, help="per parser process")
    p.add_argument("--parse-timeout", type=float, default=30.0, help="seconds per object")
    p.add_argument(
        "--fresh", action="store_true", help="start over instead of resuming an unfinished run"
    )


def run(args: argparse.Namespace) -> int:
    from libs.contracts.settings import ServiceSettings, load_settings
    from libs.db.migrations import migrate
    from libs.db.pool import create_pool
    from libs.storage import open_store

    settings = load_settings(ServiceSettings)
    store = open_store(args.storage_url or settings.storage_url)
    if args.batch_size < 1:
        raise SystemExit("--batch-size must be at least 1")

    async def main() -> int:
        pool = await create_pool(settings.database_url, size=2)
        executor = IsolatedExecutor(
            args.workers,
            args.memory_limit_mb,
            args.parse_timeout,
            preload=(extract_file.__module__,),
        )
        try:
            await migrate(pool)
            await executor.warm_up()
            return await rebuild(
                pool, store, executor, batch_size=args.batch_size, fresh=args.fresh
            )
        finally:
            executor.close()
            await pool.close()

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        print("\nrebuild-index interrupted: run it again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # the operator gets the cause, not a traceback
        while isinstance(exc, ExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        print(
            f"rebuild-index stopped: {type(exc).__name__}: {exc}\n"
            "Nothing after the last committed batch was kept: run it again to resume.",
            file=sys.stderr,
        )
        return 3
