"""Wire the router: the consumer that queues stored instances, one sending round per
destination, the queue-depth gauges."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import asyncpg

from libs.contracts.errors import PermanentError
from libs.contracts.events import InstanceStored
from libs.db import routing
from libs.db.locks import LockSpace, SingleReader
from libs.db.routing import QueueItem, Routed
from libs.dicom_net.client import DicomClient
from libs.dicom_net.models import Peer
from libs.dicom_net.tls import DicomTls
from libs.kafka.consumer import BatchRoute
from libs.runtime.service import Runtime
from libs.storage import ObjectStore, instance_key, open_store
from libs.storage.download import download
from libs.storage.local import LocalStore
from services.router.config import RouterSettings
from services.router.handlers import handle_stored_batch
from services.router.metrics import RouterMetrics
from services.router.rules import Destination
from services.router.sender import Sender


class PgRoutes:
    """The queue ports of the consumer and of the senders, on PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def enqueue(self, rows: Sequence[Routed]) -> int:
        async with self.pool.acquire() as conn:
            return await routing.enqueue(conn, rows)

    async def in_doubt(self, destination: str) -> list[QueueItem]:
        async with self.pool.acquire() as conn:
            return await routing.in_doubt(conn, destination)

    async def due(self, destination: str, limit: int) -> list[QueueItem]:
        async with self.pool.acquire() as conn:
            return await routing.due(conn, destination, limit)

    async def next_due_in(self, destination: str) -> float | None:
        async with self.pool.acquire() as conn:
            return await routing.next_due_in(conn, destination)

    async def sending(self, item: QueueItem) -> None:
        async with self.pool.acquire() as conn:
            await routing.sending(conn, item.destination, item.sop_instance_uid)

    async def sent(self, item: QueueItem) -> None:
        async with self.pool.acquire() as conn:
            await routing.sent(conn, item.destination, item.sop_instance_uid)

    async def requeue(
        self, item: QueueItem, *, delay_seconds: float, error: str | None, attempt: bool
    ) -> None:
        async with self.pool.acquire() as conn:
            await routing.requeue(
                conn,
                item.destination,
                item.sop_instance_uid,
                delay_seconds=delay_seconds,
                error=error,
                attempt=attempt,
            )

    async def failed(self, item: QueueItem, error: str) -> None:
        async with self.pool.acquire() as conn:
            await routing.failed(conn, item.destination, item.sop_instance_uid, error)


class StoredFiles:
    """A stored instance as a local file: the file itself on local storage, a temporary
    download otherwise (removed after the C-STORE). The key is the canonical one of the
    instance's UIDs (conflicting copies are never routed)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @asynccontextmanager
    async def local(self, item: QueueItem) -> AsyncIterator[Path]:
        try:
            key = instance_key(item.study_uid, item.series_uid, item.sop_instance_uid)
        except ValueError as exc:
            raise PermanentError(str(exc)) from exc
        if isinstance(self._store, LocalStore):
            path = self._store.path_for(key)
            if not await asyncio.to_thread(path.is_file):
                raise PermanentError(f"the stored copy {key} is gone")
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="dicomflow-router-") as folder:
            path = Path(folder) / "instance.dcm"
            await download(self._store, key, path)
            yield path


def client_for(settings: RouterSettings, destination: Destination) -> DicomClient:
    return DicomClient(
        Peer(ae_title=destination.ae_title, host=destination.host, port=destination.port),
        calling_ae=settings.calling_ae,
        max_pdu=settings.max_pdu,
        timeout=settings.timeout_seconds,
        connect_timeout=settings.connect_timeout_seconds,
        retries=0,  # the sender backs the destination off itself
        tls=DicomTls(settings.tls_ca, settings.tls_cert, settings.tls_key)
        if destination.tls
        else None,
    )


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, RouterSettings)
    config = settings.routing()
    pool = await rt.pool()
    routes = PgRoutes(pool)
    metrics = RouterMetrics.create(rt.name, rt.registry)
    store = open_store(settings.storage_url)
    files = StoredFiles(store)
    for destination in config.destinations:
        sender = Sender(
            destination,
            routes=routes,
            client=client_for(settings, destination),
            files=files.local,
            metrics=metrics,
            stopping=rt.stopping,
            batch=settings.send_batch,
            max_attempts=settings.max_attempts,
            backoff_seconds=settings.backoff_seconds,
            max_backoff_seconds=settings.max_backoff_seconds,
            poll_seconds=settings.poll_seconds,
        )
        rt.every(
            f"send:{destination.name}",
            settings.poll_seconds,
            sender.round,
            single_reader=SingleReader(pool, LockSpace.ROUTE_DESTINATION, destination.name),
        )
    names = [d.name for d in config.destinations]
    rt.every(
        "queue-depth", settings.depth_interval_seconds, partial(gauge_depth, pool, metrics, names)
    )
    await rt.consumer(
        {
            InstanceStored.TOPIC: BatchRoute(
                InstanceStored, partial(handle_stored_batch, config=config, queue=routes)
            )
        }
    )


async def gauge_depth(pool: asyncpg.Pool, metrics: RouterMetrics, names: list[str]) -> None:
    """Queue depth per destination and state, for every configured destination (0 shown)."""
    async with pool.acquire() as conn:
        counts = await routing.depth(conn)
    for name in names:
        for state in ("queued", "sending", "failed"):
            metrics.queue.labels(name, state).set(counts.get((name, state), 0))
