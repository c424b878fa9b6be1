from __future__ import annotations

import zlib
from collections.abc import Sequence

import asyncpg
from prometheus_client import Counter

from libs.contracts.events import Event
from libs.db import dcm4chee
from libs.db.dcm4chee import FoundFile, Watermark
from libs.db.index import SeriesSummary, record_study_summary
from libs.db.ledger import LedgerRow
from libs.runtime.logging import get_logger
from libs.runtime.service import Runtime
from services.dcm4chee_watcher.archive import Archive, ArchiveStudy
from services.dcm4chee_watcher.config import Dcm4cheeWatcherSettings
from services.dcm4chee_watcher.connections import connect_archive
from services.dcm4chee_watcher.rounds import (
    Announce,
    RoundReport,
    full_round,
    metadata_round,
)

log = get_logger(__name__)


class PgState:
    """The watcher's state in dicomflow's PostgreSQL, for one archive (`source`)."""

    def __init__(self, pool: asyncpg.Pool, source: str) -> None:
        self.pool = pool
        self.source = source

    async def watermark(self) -> Watermark:
        async with self.pool.acquire() as conn:
            return await dcm4chee.watermark(conn, self.source)

    async def advance(self, to: Watermark) -> None:
        async with self.pool.acquire() as conn:
            await dcm4chee.advance(conn, self.source, to, 1)

    async def emitted(self, study_uids: Sequence[str]) -> set[str]:
        async with self.pool.acquire() as conn:
            return await dcm4chee.emitted(conn, self.source, study_uids)

    async def index_study(
        self, study: ArchiveStudy, series: list[SeriesSummary], announce: Announce
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            snapshot = await record_study_summary(conn, study.patient, study.study, series)
            await dcm4chee.advance(conn, self.source, study.watermark, 1)
            # Commit only once the announcement is acknowledged: none goes unannounced.
            await announce(snapshot)

    async def record_round(
        self, files: Sequence[FoundFile], to: Watermark, studies: int
    ) -> list[LedgerRow]:
        async with self.pool.acquire() as conn:
            return await dcm4chee.record_round(conn, self.source, files, to, studies)


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, Dcm4cheeWatcherSettings)
    pool = await rt.pool()
    producer = await rt.producer()
    dialect = settings.archive_dialect()
    assert dialect is not None
    try:
        db = await connect_archive(settings.archive_url, dialect, size=settings.archive_pool_size)
    except Exception as exc:  # unreachable or refused: a configuration problem, said clearly
        raise ValueError(f"cannot connect to the dcm4chee archive database: {exc!r}") from exc
    rt.resources.push_async_callback(db.close)
    archive = Archive(db, settings.schema_version)
    state = PgState(pool, settings.name)
    studies = Counter(
        "dicomflow_dcm4chee_watcher_studies_total",
        "Archive studies read, by what was done with them.",
        ["mode"],
        registry=rt.registry,
    )
    rounds = Counter(
        "dicomflow_dcm4chee_watcher_rounds_total",
        "Rounds of reading the archive, by outcome (a flat `ok` line: the watcher is stuck).",
        ["outcome"],
        registry=rt.registry,
    )
    unreachable = Counter(
        "dicomflow_dcm4chee_watcher_unreachable_total",
        "Archive instances whose file could not be read here (recorded as failed).",
        registry=rt.registry,
    )

    async def publish(events: Sequence[Event]) -> None:
        await producer.publish(*events)

    async def ping() -> bool:
        await db.now()
        return True

    rt.readiness.add("archive", ping)

    async def one_round() -> RoundReport:
        if settings.mode == "metadata":
            return await metadata_round(
                archive,
                state,
                publish,
                settle_seconds=settings.settle_seconds,
                limit=settings.study_batch_size,
            )
        return await full_round(
            archive,
            state,
            publish,
            roots=settings.storage_roots,
            settle_seconds=settings.settle_seconds,
            limit=settings.study_batch_size,
            source=settings.name,
        )

    async def watch() -> None:
        # One reader per archive across replicas: a session advisory lock keyed by its name.
        lock = zlib.crc32(settings.name.encode()) & 0x7FFFFFFF
        while not rt.stopping.is_set():
            report = RoundReport()
            try:
                async with pool.acquire() as conn:
                    if await conn.fetchval("SELECT pg_try_advisory_lock(2, $1)", lock):
                        try:
                            report = await one_round()
                        finally:
                            await conn.execute("SELECT pg_advisory_unlock(2, $1)", lock)
                rounds.labels("ok").inc()
            except Exception as exc:  # the round is repeated from the watermark
                rounds.labels("failed").inc()
                log.warning("archive round failed", error=repr(exc))
            if report.studies:
                studies.labels(settings.mode).inc(report.studies)
                unreachable.inc(report.unreachable)
                log.info("archive round", **vars(report))
            # A full batch means more is waiting: go on at once.
            if report.studies < settings.study_batch_size and not await rt.sleep(
                settings.poll_interval_seconds
            ):
                return

    rt.add_worker("watch", watch)
