from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

import asyncpg
from prometheus_client import Counter

from libs.db import dcm4chee
from libs.db.dcm4chee import FoundFile, Watermark
from libs.db.index import SeriesSummary, record_study_summary
from libs.db.ledger import LedgerRow
from libs.db.locks import LockSpace, SingleReader
from libs.runtime.logging import get_logger
from libs.runtime.periodic import AT_ONCE, After, Exclusive
from libs.runtime.service import Runtime
from services.dcm4chee_watcher.archive import Archive, ArchiveStudy
from services.dcm4chee_watcher.config import Dcm4cheeWatcherSettings
from services.dcm4chee_watcher.connections import connect_archive
from services.dcm4chee_watcher.rounds import (
    Announce,
    RoundReport,
    deletion_round,
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
            await dcm4chee.record_studies(conn, self.source, [study.study.study_uid])
            await dcm4chee.advance(conn, self.source, study.watermark, 1)
            # Commit only once the announcement is acknowledged: none goes unannounced.
            await announce(snapshot)

    async def record_round(
        self, files: Sequence[FoundFile], to: Watermark, studies: Sequence[str]
    ) -> list[LedgerRow]:
        async with self.pool.acquire() as conn:
            return await dcm4chee.record_round(conn, self.source, files, to, len(studies), studies)

    async def studies_to_check(self, limit: int) -> list[str]:
        async with self.pool.acquire() as conn:
            return await dcm4chee.studies_to_check(conn, self.source, limit)

    async def record_check(self, present: Sequence[str], gone: Sequence[str]) -> list[str]:
        async with self.pool.acquire() as conn:
            return await dcm4chee.record_check(conn, self.source, present, gone)


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

    async def ping() -> bool:
        await db.now()
        return True

    rt.readiness.add("archive", ping)
    if settings.mode == "metadata":
        one_round = partial(
            metadata_round,
            archive,
            state,
            producer.publish_all,
            settle_seconds=settings.settle_seconds,
            limit=settings.study_batch_size,
        )
    else:
        one_round = partial(
            full_round,
            archive,
            state,
            producer.publish_all,
            roots=settings.storage_roots,
            settle_seconds=settings.settle_seconds,
            limit=settings.study_batch_size,
            source=settings.name,
        )
    metrics = WatchMetrics(rounds=rounds, studies=studies, unreachable=unreachable)
    # One reader per archive across replicas: a session advisory lock keyed by its name.
    lock = SingleReader(pool, LockSpace.DCM4CHEE_ARCHIVE, settings.name)
    rt.every(
        "watch",
        settings.poll_interval_seconds,
        partial(watch_round, one_round, lock, metrics, settings.mode, settings.study_batch_size),
    )
    gone = Counter(
        "dicomflow_dcm4chee_watcher_studies_gone_total",
        "Studies found deleted from the archive (marked in the index, our copy kept).",
        registry=rt.registry,
    )
    sweep = SingleReader(pool, LockSpace.DCM4CHEE_ARCHIVE, f"{settings.name}#deletions")
    rt.every(
        "deletions",
        settings.deletion_check_seconds,
        partial(check_deletions, archive, state, sweep, gone, settings.deletion_batch_size),
    )


async def check_deletions(
    archive: Archive, state: PgState, lock: Exclusive, gone: Counter, batch_size: int
) -> After | None:
    """A batch of the known studies (checked longest ago first) against the archive, by one
    replica; the next batch at the next interval."""
    async with lock.held() as mine:
        if not mine:
            return None
        newly = await deletion_round(archive, state, limit=batch_size)
    gone.inc(len(newly))
    return None


@dataclass(frozen=True)
class WatchMetrics:
    rounds: Counter
    studies: Counter
    unreachable: Counter


async def watch_round(
    one_round: Callable[[], Awaitable[RoundReport]],
    lock: Exclusive,
    metrics: WatchMetrics,
    mode: str,
    batch_size: int,
) -> After | None:
    """One round if this replica holds the archive's lock; a failed round is repeated from
    the watermark. A full batch means more is waiting: go on at once."""
    report = RoundReport()
    try:
        async with lock.held() as mine:
            if mine:
                report = await one_round()
    except Exception:
        metrics.rounds.labels("failed").inc()
        raise
    metrics.rounds.labels("ok").inc()
    if report.studies:
        metrics.studies.labels(mode).inc(report.studies)
        metrics.unreachable.inc(report.unreachable)
        log.info("archive round", **vars(report))
    return AT_ONCE if report.studies >= batch_size else None
