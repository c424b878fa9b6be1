from __future__ import annotations

from functools import partial

import asyncpg
from prometheus_client import Counter

from libs.db import ledger, tasks
from libs.db.ledger import LedgerRow
from libs.kafka.admin import ensure_topics
from libs.runtime.service import Runtime
from services.reconciler.config import ReconcilerSettings
from services.reconciler.rounds import reconcile_round


class PgLedger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def seconds_since_last_outcome(self) -> float | None:
        async with self.pool.acquire() as conn:
            return await ledger.seconds_since_last_outcome(conn)

    async def seconds_since_latest_outcome_discovery(self) -> float | None:
        async with self.pool.acquire() as conn:
            return await ledger.seconds_since_latest_outcome_discovery(conn)

    async def has_pending_older_than(self, seconds: float) -> bool:
        async with self.pool.acquire() as conn:
            return bool(
                await conn.fetchval(
                    """SELECT EXISTS (SELECT 1 FROM ingest_files WHERE status = 'pending'
                           AND updated_at < now() - make_interval(secs => $1)
                           AND uri NOT LIKE $2)""",
                    seconds,
                    ledger.NOT_YET_FETCHED,
                )
            )

    async def take_stale(self, older_than_seconds: float, limit: int) -> list[LedgerRow]:
        async with self.pool.acquire() as conn:
            return await ledger.stale_pending(
                conn, older_than_seconds=older_than_seconds, limit=limit
            )

    async def complete_finished_tasks(self) -> int:
        done = 0
        async with self.pool.acquire() as conn:
            for task_id in await tasks.running_task_ids(conn):
                async with conn.transaction():
                    await conn.execute(
                        "SELECT 1 FROM import_tasks WHERE id = $1 FOR UPDATE", task_id
                    )
                    done += await ledger.complete_task_if_done(conn, task_id)
        return done


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, ReconcilerSettings)
    pool = await rt.pool()
    producer = await rt.producer()
    port = PgLedger(pool)
    rounds = Counter(
        "dicomflow_reconciler_rounds_total",
        "Reconciliation rounds, by outcome (ok, failed).",
        ["status"],
        registry=rt.registry,
    )
    reemitted = Counter(
        "dicomflow_reconciler_reemitted_total",
        "Stale ledger files whose discovery was published again.",
        registry=rt.registry,
    )
    for status in ("ok", "failed"):
        rounds.labels(status)

    # A restarted in-memory broker has no topics: each round declares them again first.
    declare_topics = partial(
        ensure_topics,
        settings.kafka,
        partitions=settings.kafka_topic_partitions,
        replication_factor=settings.kafka_replication_factor,
    )
    rt.every(
        "reconcile",
        settings.interval_seconds,
        partial(
            reconcile_round,
            ledger=port,
            publish=producer.publish_all,
            declare_topics=declare_topics,
            idle_seconds=settings.idle_seconds,
            stale_seconds=settings.stale_seconds,
            batch_size=settings.reemit_batch_size,
            rounds=rounds,
            reemitted=reemitted,
        ),
        wait_first=True,
    )
