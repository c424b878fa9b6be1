from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import asyncpg
from prometheus_client import Histogram

from libs.contracts.events import (
    DeadLetter,
    InstanceDuplicated,
    InstanceStored,
    StudySnapshot,
)
from libs.contracts.topics import dlq_topic
from libs.db import index as repo
from libs.db import index_batch, ledger
from libs.kafka.consumer import BatchRoute, Route
from libs.runtime.metrics import end_to_end_histogram
from libs.runtime.service import Runtime
from services.indexer.config import IndexerSettings
from services.indexer.handlers import (
    handle_dead_letter,
    handle_duplicate_batch,
    handle_stored_batch,
)
from services.indexer.rounds import announce_stable

# Every topic whose dead letters mean "this file failed" (the ledger's final outcome).
OUTCOME_DLQS = (
    "dicom.discovered.v1",
    "dicom.extracted.v1",
    "dicom.unique.v1",
    "dicom.stored.v1",
    "dicom.duplicate.v1",
)


class PgIndex:
    def __init__(self, pool: asyncpg.Pool, end_to_end: Histogram) -> None:
        self.pool = pool
        self.end_to_end = end_to_end

    def _observe(self, outcome: str, seconds: float | None) -> None:
        if seconds is not None:  # None: recorded by an earlier delivery, already observed
            self.end_to_end.labels(outcome).observe(seconds)

    async def index_many(self, events: Sequence[InstanceStored]) -> dict[str, StudySnapshot]:
        async with self.pool.acquire() as conn:
            done = await index_batch.index_stored_many(conn, events)
        for e, seconds in zip(events, done.latencies, strict=True):
            self._observe("conflict" if e.disposition == "conflict" else "indexed", seconds)
        return done.snapshots

    async def duplicates_many(self, events: Sequence[InstanceDuplicated]) -> None:
        async with self.pool.acquire() as conn:
            for seconds in await index_batch.record_duplicates_many(conn, events):
                self._observe("duplicate", seconds)

    async def failed(self, file_id: int, stage: str, reason: str) -> None:
        async with self.pool.acquire() as conn:
            await ledger.mark_outcome(conn, file_id, "failed", stage=stage, reason=reason)

    @asynccontextmanager
    async def mark_stable(
        self, quiet_seconds: float, limit: int
    ) -> AsyncIterator[list[StudySnapshot]]:
        """One transaction: committed when the block (the announcement) succeeds."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield await repo.mark_stable(conn, quiet_seconds=quiet_seconds, limit=limit)


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, IndexerSettings)
    pool = await rt.pool()
    index = PgIndex(pool, end_to_end_histogram(rt.name, rt.registry))
    await rt.consumer(
        {
            InstanceStored.TOPIC: BatchRoute(
                InstanceStored, partial(handle_stored_batch, index=index)
            ),
            InstanceDuplicated.TOPIC: BatchRoute(
                InstanceDuplicated, partial(handle_duplicate_batch, index=index)
            ),
        }
    )
    await rt.consumer(
        {
            dlq_topic(t): Route(DeadLetter, partial(handle_dead_letter, index=index))
            for t in OUTCOME_DLQS
        },
        group_id="dicomflow-indexer-outcomes",
        dead_letters=False,
    )
    producer = await rt.producer()
    rt.every(
        "stable",
        settings.stable_check_seconds,
        partial(announce_stable, index, producer.publish_all, settings.study_stable_seconds),
        wait_first=True,
    )
