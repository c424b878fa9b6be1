"""De-identified exports, run by the API (a periodic round): lease the oldest waiting job,
de-identify its studies' instances one at a time and stream them into one archive.

Per instance: the stored object is copied to a scratch file, the isolated worker pool
(`libs.runtime.sandbox`: it parses stored files) writes the de-identified copy beside it
(`libs.deid.files.deidentify_file`), and that copy is streamed into the archive writer (the
packager's writers: ZIP or tar.zst); both scratch files are removed before the next one. Memory
stays bounded by one instance in the worker (large elements are read from the file as they
are written) and by the manifest's list of files.

Outcomes: an instance at risk of burned-in annotation is left out (unless asked for) and
listed; an instance missing from storage or that cannot be parsed is listed as failed; both
reach the manifest and the job. An outage (storage or database) gives the job back: the
next round starts it again from the beginning (the archive is rewritten whole), up to
`max_attempts` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
from prometheus_client import CollectorRegistry, Counter

from libs.db import exports
from libs.db.archives import ArchiveInstance, archive_listing
from libs.deid.deidentify import Keys, Options
from libs.deid.files import FileResult, deidentify_file
from libs.runtime.logging import get_logger
from libs.runtime.periodic import AT_ONCE, After
from libs.runtime.sandbox import IsolatedExecutor
from libs.storage import ObjectStore, served_key
from services.packager.writers import ArchiveWriter, TarZstWriter, ZipWriter

log = get_logger(__name__)
CHUNK = 1 << 20
REPORT_EVERY_SECONDS = 1.0
STANDARD = "DICOM PS3.15 Annex E, Table E.1-1 (2024b)"
EXTENSIONS = {"zip": "zip", "tar.zst": "tar.zst"}


class LeaseLost(Exception):
    """Another runner took the job (ours ran out): stop without touching it."""


class Stopping(Exception):
    """The service is stopping: the job is given back between two instances."""


class StorageUnavailable(Exception):
    """Not one instance of the export could be read: storage is down or not mounted, not
    every file lost. The job is given back and tried again later."""


@dataclass(frozen=True)
class ExportLimits:
    lease_seconds: float = 60.0
    max_attempts: int = 3
    retention_hours: float = 72.0
    zstd_level: int = 3


@dataclass(frozen=True)
class ExportMetrics:
    jobs: Counter  # by how a run ended: completed, failed, retried
    instances: Counter  # by outcome: exported, excluded, failed

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ExportMetrics:
        return cls(
            Counter(
                "dicomflow_api_exports_total",
                "De-identified export runs, by how they ended (retried: given back after "
                "an outage or a stop).",
                ["status"],
                registry=registry,
            ),
            Counter(
                "dicomflow_api_export_instances_total",
                "Instances of completed de-identified exports, by outcome.",
                ["outcome"],
                registry=registry,
            ),
        )


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ExportRunner:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: ObjectStore,
        executor: IsolatedExecutor,
        directory: Path,
        *,
        limits: ExportLimits | None = None,
        owner: str | None = None,
        metrics: ExportMetrics | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.pool = pool
        self.store = store
        self.executor = executor
        self.directory = directory
        self.limits = limits or ExportLimits()
        self.owner = owner or default_owner()
        self.metrics = metrics or ExportMetrics.create(CollectorRegistry())
        self.stopping = stopping or asyncio.Event()

    def archive_path(self, name: str) -> Path:
        return self.directory / name

    async def round(self) -> After | None:
        """Run the oldest waiting job to its end; AT_ONCE when one ran (more may wait)."""
        async with self.pool.acquire() as conn:
            job = await exports.lease_next(conn, self.owner, self.limits.lease_seconds)
            if job is None:
                return None
            if job.attempts > self.limits.max_attempts:
                reason = f"gave up after {job.attempts - 1} attempts; last: {job.error}"
                await exports.fail(conn, job.id, self.owner, reason)
                self.metrics.jobs.labels("failed").inc()
                return AT_ONCE
        log.info("export started", export_id=job.id, studies=len(job.study_uids))
        try:
            await self.run(job)
        except LeaseLost:
            log.warning("export lease lost", export_id=job.id)
        except Stopping:
            log.info("export given back: the service is stopping", export_id=job.id)
            await self._give_back(job.id, "interrupted by a restart", counts=False)
            return None
        except BaseException as exc:
            log.warning("export interrupted; it will be retried", export_id=job.id, error=repr(exc))
            await self._give_back(job.id, _reason(exc))
            raise
        return AT_ONCE

    async def _give_back(self, job_id: str, reason: str, *, counts: bool = True) -> None:
        self.metrics.jobs.labels("retried").inc()
        async with self.pool.acquire() as conn:
            await exports.release(conn, job_id, self.owner, reason, counts=counts)

    async def run(self, job: exports.ExportJob) -> None:
        started = time.monotonic()
        fmt = str(job.profile.get("format", "zip"))
        options = Options(**job.profile.get("options", {}))
        include = bool(job.profile.get("include_burned_in", False))
        async with self.pool.acquire() as conn:
            keys = Keys(await exports.secret(conn))
            listings = [await archive_listing(conn, uid) for uid in job.study_uids]
        instances = [(lst.study_uid, i) for lst in listings if lst for i in lst.instances]
        progress = exports.Progress(total=len(instances))
        name = f"{job.id}.{EXTENSIONS[fmt]}"
        scratch = self.directory / f"{job.id}.scratch"
        partial = self.directory / f"{name}.part"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        files: list[dict[str, Any]] = []
        try:
            with partial.open("wb") as out:
                writer = self._writer(fmt, out)
                try:
                    last = 0.0
                    for study_uid, instance in instances:
                        if self.stopping.is_set():
                            raise Stopping(job.id)
                        await self._one(
                            writer, scratch, study_uid, instance, (options, keys, include),
                            progress, files,
                        )  # fmt: skip
                        if time.monotonic() - last > REPORT_EVERY_SECONDS:
                            await self._report(job.id, progress)
                            last = time.monotonic()
                    if progress.total and progress.missing == progress.total:
                        raise StorageUnavailable(f"none of {progress.total} instances read")
                except BaseException:
                    _abandon(writer)
                    raise
                manifest = _manifest(job, keys, options, include, files, progress)
                await asyncio.to_thread(_member, writer, "manifest.json", manifest)
                await asyncio.to_thread(writer.close)
            size, digest = await asyncio.to_thread(_sha256, partial)
            os.replace(partial, self.archive_path(name))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            partial.unlink(missing_ok=True)
        async with self.pool.acquire() as conn:
            if not await exports.complete(conn, job.id, self.owner, progress, name, size, digest):
                raise LeaseLost(job.id)
        self.metrics.jobs.labels("completed").inc()
        for outcome in ("exported", "excluded", "failed"):
            self.metrics.instances.labels(outcome).inc(getattr(progress, outcome))
        log.info(
            "export completed",
            export_id=job.id,
            exported=progress.exported,
            excluded=progress.excluded,
            failed=progress.failed,
            size=size,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _report(self, job_id: str, progress: exports.Progress) -> None:
        async with self.pool.acquire() as conn:
            if not await exports.report(
                conn, job_id, self.owner, progress, self.limits.lease_seconds
            ):
                raise LeaseLost(job_id)

    def _writer(self, fmt: str, out: BinaryIO) -> ArchiveWriter:
        now = datetime.now(UTC)
        if fmt == "tar.zst":
            return TarZstWriter(out, mtime=now, level=self.limits.zstd_level, threads=0)
        return ZipWriter(out, mtime=now)

    async def _one(
        self,
        writer: ArchiveWriter,
        scratch: Path,
        study_uid: str,
        instance: ArchiveInstance,
        how: tuple[Options, Keys, bool],
        progress: exports.Progress,
        files: list[dict[str, Any]],
    ) -> None:
        options, keys, include = how
        source, target = scratch / "in.dcm", scratch / "out.dcm"
        key = served_key(
            study_uid, instance.series_uid, instance.sop_instance_uid, instance.revision_key
        )
        progress.processed += 1
        ids = {
            "study_uid": keys.uid(study_uid),
            "series_uid": keys.uid(instance.series_uid),
            "sop_uid": keys.uid(instance.sop_instance_uid),
            "modality": instance.modality,
            # Kept in the job (ops may look the instance up), never in the archive.
            "original": {
                "study_uid": study_uid,
                "series_uid": instance.series_uid,
                "sop_uid": instance.sop_instance_uid,
            },
        }
        try:
            await self._download(key, source)
        except FileNotFoundError:
            progress.failed += 1
            progress.missing += 1
            progress.note({"outcome": "failed", "reason": "missing from storage", **ids})
            return
        try:
            result: FileResult = await self.executor.run(
                deidentify_file, str(source), str(target), options, keys.secret, include
            )
        except Exception as exc:  # the file's own fault: unreadable, too big, hangs the parser
            progress.failed += 1
            progress.note({"outcome": "failed", "reason": _reason(exc), **ids})
            return
        finally:
            source.unlink(missing_ok=True)
        if result.excluded is not None:
            progress.excluded += 1
            progress.note({"outcome": "excluded", "reason": result.excluded, **ids})
            return
        path = f"{result.patient}/{result.study_uid}/{result.series_uid}/{result.sop_uid}.dcm"
        await asyncio.to_thread(_file_member, writer, path, target, result.size)
        target.unlink(missing_ok=True)
        files.append(
            {
                "path": path,
                "size": result.size,
                "sha256": result.sha256,
                "modality": result.modality,
            }
        )
        progress.exported += 1

    async def _download(self, key: str, target: Path) -> None:
        chunks = self.store.read(key, CHUNK)
        try:
            with target.open("wb") as f:
                async for chunk in chunks:
                    await asyncio.to_thread(f.write, chunk)
        finally:
            if (aclose := getattr(chunks, "aclose", None)) is not None:
                await aclose()

    async def expire(self) -> None:
        """Remove archives older than the retention; their jobs become `expired`."""
        async with self.pool.acquire() as conn:
            names = await exports.expire(conn, self.limits.retention_hours)
        for name in names:
            self.archive_path(name).unlink(missing_ok=True)
        if names:
            log.info("export archives expired", count=len(names))


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def _manifest(
    job: exports.ExportJob,
    keys: Keys,
    options: Options,
    include: bool,
    files: list[dict[str, Any]],
    progress: exports.Progress,
) -> bytes:
    """What the archive holds and what it left out, in de-identified terms only (the
    original UIDs stay in the job, visible to the API's ops users)."""
    doc = {
        "export_id": job.id,
        "standard": STANDARD,
        "profile": {
            "basic": True,
            **asdict(options),
            "include_burned_in": include,
        },
        "studies": [keys.uid(uid) for uid in job.study_uids],
        "counts": {
            "instances": progress.total,
            "exported": progress.exported,
            "excluded": progress.excluded,
            "failed": progress.failed,
        },
        "files": files,
        "left_out": [{k: v for k, v in o.items() if k != "original"} for o in progress.outcomes],
    }
    return json.dumps(doc, indent=1, ensure_ascii=False).encode()


def _abandon(writer: ArchiveWriter) -> None:
    """Close a writer whose archive is thrown away (a ZipFile left open complains when
    collected); the partial file is deleted after."""
    for step in (writer.end, writer.close):
        with contextlib.suppress(Exception):
            step()


def _member(writer: ArchiveWriter, path: str, data: bytes) -> None:
    writer.begin(path, len(data))
    writer.write(data)
    writer.end()


def _file_member(writer: ArchiveWriter, path: str, source: Path, size: int) -> None:
    writer.begin(path, size)
    with source.open("rb") as f:
        while chunk := f.read(CHUNK):
            writer.write(chunk)
    writer.end()


def _sha256(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
