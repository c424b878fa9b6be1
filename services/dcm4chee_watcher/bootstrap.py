from __future__ import annotations

from collections import Counter as CounterOf
from collections.abc import Collection, Sequence
from functools import partial

import asyncpg
from prometheus_client import Counter

from libs.db import dcm4chee, task_control
from libs.db import dcm4chee_moves as moves_db
from libs.db.dcm4chee import FoundFile, Watermark
from libs.db.dcm4chee_moves import Awaiting
from libs.db.index import SeriesSummary, record_study_summary
from libs.db.ledger import LedgerRow
from libs.db.locks import LockSpace, SingleReader
from libs.dicom_net.client import DicomClient
from libs.dicom_net.models import Peer
from libs.runtime.logging import get_logger
from libs.runtime.service import Runtime
from services.dcm4chee_watcher.archive import Archive, ArchiveStudy
from services.dcm4chee_watcher.config import Dcm4cheeWatcherSettings
from services.dcm4chee_watcher.connections import connect_archive
from services.dcm4chee_watcher.moves import MoveMetrics, MovePolicy, Mover, move_round
from services.dcm4chee_watcher.rounds import (
    Announce,
    WatchMetrics,
    check_deletions,
    full_round,
    metadata_round,
    watch_round,
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


class PgMoves:
    """The instances fetched by C-MOVE from one archive (`source`), in dicomflow's database."""

    def __init__(self, pool: asyncpg.Pool, source: str) -> None:
        self.pool = pool
        self.source = source

    async def cancel_stopped(self) -> int:
        async with self.pool.acquire() as conn:
            return await moves_db.cancel_stopped(conn, self.source)

    async def stopped_tasks(self, task_ids: Collection[str]) -> set[str]:
        async with self.pool.acquire() as conn:
            return set(await task_control.stopped(conn, task_ids))

    async def link(self, timeout_seconds: float) -> CounterOf[str]:
        async with self.pool.acquire() as conn:
            return await moves_db.link(conn, self.source, timeout_seconds=timeout_seconds)

    async def due(self, studies: int) -> list[Awaiting]:
        async with self.pool.acquire() as conn:
            return await moves_db.due(conn, self.source, studies=studies)

    async def start(self, sop_uids: Sequence[str]) -> None:
        async with self.pool.acquire() as conn:
            await moves_db.start(conn, self.source, sop_uids)

    async def moved(self, sop_uids: Sequence[str]) -> None:
        async with self.pool.acquire() as conn:
            await moves_db.moved(conn, self.source, sop_uids)

    async def defer(
        self, sop_uids: Sequence[str], *, error: str, delay: float, count: bool
    ) -> None:
        async with self.pool.acquire() as conn:
            await moves_db.defer(conn, self.source, sop_uids, error=error, delay=delay, count=count)

    async def fail(self, failures: Sequence[tuple[str, str]]) -> int:
        async with self.pool.acquire() as conn:
            return await moves_db.fail(conn, self.source, failures)


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
            retrieve=settings.retrieves(),
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
    if settings.retrieves():
        wire_moves(rt, settings, pool)


def wire_moves(rt: Runtime, settings: Dcm4cheeWatcherSettings, pool: asyncpg.Pool) -> None:
    """Full mode with the archive's DICOM side configured: unreachable files by C-MOVE."""
    s = settings
    client = DicomClient(
        Peer(ae_title=s.dicom_ae_title, host=s.dicom_host, port=s.dicom_port),
        calling_ae=s.calling_ae,
        timeout=s.dicom_timeout_seconds,
    )
    policy = MovePolicy(
        archive_ae=s.dicom_ae_title,
        destination=s.move_destination,
        studies=s.move_study_batch,
        max_attempts=s.move_max_attempts,
        backoff=s.move_backoff_seconds,
        max_backoff=s.move_max_backoff_seconds,
        link_timeout=s.move_link_timeout_seconds,
        interval=s.move_interval_seconds,
    )
    mover = Mover(PgMoves(pool, s.name), client, policy)
    metrics = MoveMetrics(
        rounds=Counter(
            "dicomflow_dcm4chee_watcher_move_rounds_total",
            "Rounds fetching unreachable files by C-MOVE, by outcome (ok, archive_away, failed).",
            ["outcome"],
            registry=rt.registry,
        ),
        moved=Counter(
            "dicomflow_dcm4chee_watcher_moved_instances_total",
            "Instances the archive said it sent to our receiver by C-MOVE.",
            registry=rt.registry,
        ),
        outcomes=Counter(
            "dicomflow_dcm4chee_watcher_fetch_outcomes_total",
            "Outcomes written on the ledger rows of instances fetched by C-MOVE (indexed, "
            "duplicate, conflict, failed, cancelled; not_fetched: failed before any copy).",
            ["outcome"],
            registry=rt.registry,
        ),
    )
    lock = SingleReader(pool, LockSpace.DCM4CHEE_ARCHIVE, f"{s.name}#moves")
    log.info(
        "unreachable files fetched by C-MOVE",
        archive=f"{s.dicom_ae_title}@{s.dicom_host}:{s.dicom_port}",
        destination=s.move_destination,
    )
    rt.every("moves", s.move_interval_seconds, partial(move_round, mover, lock, metrics))
