"""The poller: C-FIND on one PACS in the window since its watermark, then retrieve what the
index lacks. On-demand retrieves (`retrieves.py`) run through the same `PacsWatch`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from pathlib import Path

import asyncpg
from prometheus_client import Counter

from libs.contracts.events import discovered_event
from libs.db import ledger
from libs.db import pacs as pacs_db
from libs.db.ledger import NewFile
from libs.dicom_net.client import DicomClient, OnProgress
from libs.dicom_net.errors import DicomNetError
from libs.dicom_net.models import Level, Match, Peer, Query, RetrieveResult
from libs.kafka.producer import Producer
from libs.runtime.logging import get_logger
from libs.runtime.periodic import After
from services.pacs_watcher.config import Pacs, WatcherSettings
from services.pacs_watcher.policy import next_backoff, query_window, to_retrieve

log = get_logger(__name__)
P = "dicomflow_pacs_watcher"


class PacsWatch:
    """Polls one PACS: C-FIND in the window since its watermark, retrieve what is missing."""

    def __init__(
        self,
        pacs: Pacs,
        settings: WatcherSettings,
        pool: asyncpg.Pool,
        producer: Producer,
        metrics: dict[str, Counter],
    ) -> None:
        self.pacs = pacs
        self.settings = settings
        self.pool = pool
        self.producer = producer
        self.metrics = metrics
        self.client = DicomClient(
            Peer(ae_title=pacs.ae_title, host=pacs.host, port=pacs.port),
            calling_ae=settings.calling_ae,
            max_pdu=settings.max_pdu,
            timeout=settings.timeout_seconds,
            tls=settings.dicom_tls(pacs),
        )
        self.slots = asyncio.Semaphore(pacs.max_concurrent)
        # study -> (upstream count, when retrieved): not asked again while the pipeline
        # is still indexing what was just retrieved.
        self.recent: dict[str, tuple[int | None, float]] = {}
        self.delay = settings.poll_interval_seconds  # until the next poll

    async def poll_round(self) -> After:
        """A poll, then the usual interval; while the PACS is away, a growing back-off."""
        try:
            await self.poll_once()
            self.metrics["polls"].labels(self.pacs.name, "ok").inc()
            self.delay = self.settings.poll_interval_seconds
        except (DicomNetError, OSError) as exc:  # PACS away: back off, keep the watermark
            self.metrics["polls"].labels(self.pacs.name, "failed").inc()
            self.delay = next_backoff(
                self.delay,
                base=self.settings.poll_interval_seconds,
                ceiling=self.settings.max_backoff_seconds,
            )
            log.warning("poll failed", pacs=self.pacs.name, error=str(exc), retry_in=self.delay)
        except Exception as exc:  # database away and the like: try again next interval
            self.metrics["polls"].labels(self.pacs.name, "failed").inc()
            log.warning("poll failed", pacs=self.pacs.name, error=repr(exc))
        return After(self.delay)

    async def poll_once(self) -> int:
        """One round; returns the number of studies retrieved."""
        s = self.settings
        async with self.pool.acquire() as conn:
            mark = await pacs_db.watermark(conn, self.pacs.name)
        today = date.today()
        window = query_window(mark, today, lookback=s.lookback_days, overlap=s.overlap_days)
        matches = await self.client.find(Query(level=Level.STUDY, study_date=window))
        async with self.pool.acquire() as conn:
            indexed = await pacs_db.indexed_counts(conn, [m.study_uid for m in matches])
        todo = [m for m in to_retrieve(matches, indexed) if not self._settling(m)]
        if todo and not s.in_window(datetime.now().time()):
            log.info("retrieves wait for the night window", pacs=self.pacs.name, studies=len(todo))
            return 0
        results = await asyncio.gather(*(self._retrieve(m) for m in todo), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        async with self.pool.acquire() as conn:
            await pacs_db.set_watermark(conn, self.pacs.name, today)
        if todo:
            log.info("poll retrieved", pacs=self.pacs.name, window=window, studies=len(todo))
        return len(todo)

    def _settling(self, m: Match) -> bool:
        seen = self.recent.get(m.study_uid)
        return (
            seen is not None
            and seen[0] == m.number_of_instances
            and time.monotonic() - seen[1] < self.settings.poll_interval_seconds * 10
        )

    async def _retrieve(self, m: Match) -> None:
        await self.retrieve_study(m.study_uid, expected=m.number_of_instances)

    async def retrieve_study(
        self,
        study_uid: str,
        *,
        expected: int | None = None,
        task_id: str | None = None,
        progress: OnProgress | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> RetrieveResult:
        """One study, under this PACS's semaphore (the poller's and on-demand retrieves share
        it); C-GET files enter the ledger with `task_id`. `ready` is awaited once the slot is
        held, right before the C-MOVE/C-GET: it raises to stop there (a paused task)."""
        query = Query(level=Level.STUDY, study_uid=study_uid)
        async with self.slots:
            if ready is not None:
                await ready()
            if self.pacs.retrieve == "move":
                result = await self.client.move(
                    query, self.settings.move_destination, progress=progress
                )
            else:
                folder = self.settings.staging_dir.absolute() / self.pacs.name / uuid.uuid4().hex
                result = await self.client.get(query, folder, progress=progress)
                await self._record(study_uid, [Path(f) for f in result.files], task_id)
        self.recent[study_uid] = (expected, time.monotonic())
        self.metrics["instances"].labels(self.pacs.name).inc(result.completed)
        log.info(
            "study retrieved",
            pacs=self.pacs.name,
            study_uid=study_uid,
            how=self.pacs.retrieve,
            completed=result.completed,
            failed=result.failed,
            task_id=task_id,
        )
        return result

    async def _record(self, study_uid: str, files: list[Path], task_id: str | None) -> None:
        """C-GET: the files enter the pipeline like any discovered file."""
        correlation = task_id or uuid.uuid4().hex
        new = [
            NewFile(
                source=f"pacs:{self.pacs.name}",
                uri=f.as_uri(),
                origin=f"{self.pacs.name} C-GET {study_uid}",
                size=f.stat().st_size,
                correlation_id=correlation,
                task_id=task_id,
            )
            for f in files
        ]
        async with self.pool.acquire() as conn:
            rows = await ledger.record_discovered(conn, new)
        await self.producer.publish_all([discovered_event(r) for r in rows])
