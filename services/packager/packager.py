"""Builds archives once: plans them from the index, streams every instance from the object
store into a writer, verifies each member's SHA-256 on the way, caches the result and
announces it. Concurrent requests for the same revision share one build (single flight);
a tar.zst being built can be followed as it grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from libs.contracts.events import ArchiveBuilt, new_id
from libs.db.archives import ArchiveListing
from libs.runtime.logging import get_logger
from libs.storage import ObjectStore, served_key
from services.packager.cache import ArchiveCache
from services.packager.dicomdir import build_dicomdir
from services.packager.layout import Format, Member, Plan, plan_archive
from services.packager.writers import ArchiveWriter, TarWriter, TarZstWriter, ZipWriter

log = get_logger(__name__)
Listings = Callable[[str, str | None], Awaitable[ArchiveListing | None]]
Publish = Callable[..., Awaitable[None]]
FOLLOW_CHUNK = 1 << 20


class ArchiveError(Exception):
    """The stored instances do not match the index (missing object, different bytes)."""


@dataclass(frozen=True)
class Encoding:
    zstd_level: int = 3
    zstd_threads: int = -1  # -1 = one worker per CPU

    @property
    def label(self) -> str:
        return f"zstd{self.zstd_level}"


class BuildsBusy(Exception):
    """As many archives are being built as allowed: try again shortly."""


@dataclass
class Build:
    """One build in progress; followers wait on `changed` for more bytes on disk."""

    plan: Plan
    partial: Path
    done: asyncio.Future[Path] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    task: asyncio.Task[None] | None = None  # held here: the loop keeps only weak references
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def changed(self) -> None:
        """Until more was written or the build ended (at most a second, as a safety net)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), 1.0)


class Packager:
    def __init__(
        self,
        *,
        store: ObjectStore,
        cache: ArchiveCache,
        listings: Listings,
        publish: Publish,
        encoding: Encoding,
        on_build: Callable[[], None] = lambda: None,
        max_builds: int = 0,
    ) -> None:
        self.store = store
        self.cache = cache
        self._listings = listings
        self._publish = publish
        self.encoding = encoding
        self._builds: dict[str, Build] = {}
        self._on_build = on_build
        self.max_builds = max_builds  # distinct builds at once; 0 = no cap

    async def plan(self, study_uid: str, series_uid: str | None, fmt: Format) -> Plan | None:
        listing = await self._listings(study_uid, series_uid)
        if listing is None:
            return None
        # Only tar.zst depends on the zstd settings; ZIP members are stored.
        encoder = self.encoding.label if fmt == "tar.zst" else "stored"
        return plan_archive(listing, fmt, series_uid, encoder)

    def building(self, plan: Plan) -> Build | None:
        return self._builds.get(plan.key)

    def start(self, plan: Plan) -> Build:
        """The build of `plan`: the one already running, or a new one."""
        if (build := self._builds.get(plan.key)) is not None:
            return build
        if self.max_builds and len(self._builds) >= self.max_builds:
            raise BuildsBusy(f"{len(self._builds)} archive builds are running")
        build = Build(plan, self.cache.partial_path(plan))
        build.partial.touch(exist_ok=False)  # followers may open it at once
        self._builds[plan.key] = build
        self._on_build()
        build.done.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        build.task = asyncio.create_task(self._run(build), name=f"build-{plan.key[:12]}")
        return build

    async def ensure(self, plan: Plan) -> Path:
        """The cached archive of `plan`, built first when missing."""
        if (path := self.cache.lookup(plan)) is not None:
            return path
        return await asyncio.shield(self.start(plan).done)

    async def _run(self, build: Build) -> None:
        plan, started = build.plan, time.monotonic()
        try:
            await self._write(build)
            path = self.cache.path(plan)
            os.replace(build.partial, path)
            await asyncio.to_thread(self.cache.evict, path)
        except Exception as exc:
            log.error("archive build failed", study_uid=plan.study_uid, error=str(exc))
            build.done.set_exception(exc)
        else:
            build.done.set_result(path)
        finally:
            self._builds.pop(plan.key, None)
            build.partial.unlink(missing_ok=True)
            build.notify()
        if build.done.exception() is None:
            seconds, size = time.monotonic() - started, path.stat().st_size
            log.info(
                "archive built", study_uid=plan.study_uid, size=size, seconds=round(seconds, 3)
            )
            await self._announce(plan, size, seconds)

    async def _announce(self, plan: Plan, size: int, seconds: float) -> None:
        event = ArchiveBuilt(
            correlation_id=new_id(),
            source="packager",
            study_uid=plan.study_uid,
            series_uid=plan.series_uid,
            format=plan.format,
            revision=plan.key,
            size_bytes=size,
            instance_count=len(plan.members),
            built_seconds=seconds,
        )
        try:
            await self._publish(event)
        except Exception as exc:  # the archive is there; a lost announcement is not fatal
            log.warning("archive announcement failed", study_uid=plan.study_uid, error=repr(exc))

    def _writer(self, plan: Plan, out: BinaryIO) -> ArchiveWriter:
        if plan.format == "zip":
            return ZipWriter(out, mtime=plan.last_modified)
        if plan.format == "tar":
            return TarWriter(out, mtime=plan.last_modified)
        enc = self.encoding
        return TarZstWriter(
            out, mtime=plan.last_modified, level=enc.zstd_level, threads=enc.zstd_threads
        )

    async def _write(self, build: Build) -> None:
        plan = build.plan
        # Unbuffered: what the writer wrote is in the file at once, for followers.
        with build.partial.open("r+b", buffering=0) as out:
            writer = self._writer(plan, out)
            dicomdir = await asyncio.to_thread(_dicomdir, plan)
            manifest = plan.manifest(dicomdir)
            await asyncio.to_thread(_whole_member, writer, plan.manifest_path, manifest)
            if dicomdir is not None:
                await asyncio.to_thread(_whole_member, writer, plan.dicomdir_path, dicomdir)
            for member in plan.members:
                await self._copy_member(writer, member, plan.study_uid, build)
            await asyncio.to_thread(writer.close)  # no fsync: see ArchiveCache
        build.notify()

    async def _copy_member(
        self, writer: ArchiveWriter, member: Member, study_uid: str, build: Build
    ) -> None:
        key = served_key(study_uid, member.series_uid, member.sop_instance_uid, member.revision_key)
        digest, size = hashlib.sha256(), 0
        await asyncio.to_thread(writer.begin, member.path, member.size)
        chunks = self.store.read(key)
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > member.size:
                    break
                await asyncio.to_thread(_hash_write, writer, digest, chunk)
                build.notify()
        except FileNotFoundError as exc:
            raise ArchiveError(f"{key} is missing from storage") from exc
        finally:
            if (aclose := getattr(chunks, "aclose", None)) is not None:
                await aclose()  # an early exit closes the backend's file or reader now
        if size != member.size or digest.hexdigest() != member.sha256:
            raise ArchiveError(f"{key} in storage differs from the index (size or SHA-256)")
        await asyncio.to_thread(writer.end)

    def follower(self, build: Build) -> AsyncIterator[bytes]:
        """The archive's bytes while it is built, then to its end; an error ends the stream
        early (the client sees a truncated transfer, never a wrong byte).

        The file is opened now, while the build is registered (its partial file exists); the
        descriptor survives the final rename and eviction."""
        return self._follow(build, build.partial.open("rb"))

    async def _follow(self, build: Build, f: BinaryIO) -> AsyncIterator[bytes]:
        with f:
            while True:
                finished = build.done.done()
                chunk = await asyncio.to_thread(f.read, FOLLOW_CHUNK)
                if chunk:
                    yield chunk
                    continue
                if finished:
                    if build.done.exception() is not None:
                        raise ArchiveError("archive build failed") from build.done.exception()
                    return
                await build.changed()


def _dicomdir(plan: Plan) -> bytes | None:
    d = plan.directory
    if d is None:
        return None
    return build_dicomdir(
        revision=plan.key,
        study_uid=plan.study_uid,
        patient_name=d.patient_name,
        study_date=d.study_date,
        header=d.header,
        entries=d.entries,
    )


def _whole_member(writer: ArchiveWriter, path: str, data: bytes) -> None:
    writer.begin(path, len(data))
    writer.write(data)
    writer.end()


def _hash_write(writer: ArchiveWriter, digest: hashlib._Hash, chunk: bytes) -> None:
    digest.update(chunk)
    writer.write(chunk)
