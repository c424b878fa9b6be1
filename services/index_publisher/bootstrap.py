from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import asyncpg
from prometheus_client import CollectorRegistry

from libs.contracts.events import Event, StudyMetadata
from libs.db import Conn, publications
from libs.http.delivery import Backoff, Deliverer, DeliveryMetrics, ReceiverHealth, Sleep
from libs.http.middleware import AuditMiddleware
from libs.kafka.consumer import Route
from libs.runtime.probes import ops_app
from libs.runtime.service import Runtime
from services.index_publisher.config import IndexPublisherSettings
from services.index_publisher.handlers import handle_metadata
from services.index_publisher.http_client import CentralIndexClient
from services.index_publisher.payload import PAYLOADS, StudyKeys
from services.index_publisher.replay import replay_router

PublishHandler = Callable[..., Awaitable[list[Event]]]


class PgClaim:
    def __init__(self, conn: Conn, study_uid: str, row: publications.Publication):
        self._conn = conn
        self._study_uid = study_uid
        self.keys = StudyKeys(study_pk=row.study_pk, patient_pk=row.patient_pk)
        self.delivered_revision = row.delivered_revision

    async def delivered(self, revision: int) -> None:
        await publications.mark_delivered(self._conn, self._study_uid, revision)


class PgPublications:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def claim(self, study_uid: str) -> AsyncIterator[PgClaim]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield PgClaim(conn, study_uid, await publications.lock(conn, study_uid))


def publisher(
    settings: IndexPublisherSettings,
    pool: asyncpg.Pool,
    receiver: CentralIndexClient,
    *,
    registry: CollectorRegistry,
    sleep: Sleep,
) -> tuple[PublishHandler, ReceiverHealth]:
    """The handler with its ports wired (shared by the service and the full load)."""
    metrics = DeliveryMetrics.create("index-publisher", registry)
    health = ReceiverHealth(metrics)
    deliverer = Deliverer(
        receiver.post,
        max_attempts=settings.max_attempts,
        backoff=Backoff(
            settings.backoff_seconds,
            settings.max_backoff_seconds,
            settings.retry_after_max_seconds,
        ),
        health=health,
        metrics=metrics,
        sleep=sleep,
    )
    handler = partial(
        handle_metadata,
        publications=PgPublications(pool),
        deliver=deliverer.deliver,
        render=PAYLOADS[settings.payload_format],
        center=settings.center,
        idempotency_header=settings.idempotency_header,
    )
    return handler, health


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, IndexPublisherSettings)
    settings.require_target()
    pool = await rt.pool()
    receiver = CentralIndexClient(settings)
    rt.resources.push_async_callback(receiver.close)
    handler, health = publisher(settings, pool, receiver, registry=rt.registry, sleep=rt.sleep)

    async def receiver_up() -> bool:
        return health.up

    rt.readiness.add("receiver", receiver_up)
    # /health /ready /metrics, plus the DLQ replay for operators (API key, audited).
    rt.app = ops_app(rt.name, rt.readiness, rt.registry)
    rt.app.include_router(replay_router(pool, settings.kafka, await rt.producer()))
    rt.app.add_middleware(AuditMiddleware, pool=pool)
    await rt.consumer({StudyMetadata.TOPIC: Route(StudyMetadata, handler)})
