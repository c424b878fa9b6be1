"""A service's lifecycle: start the pool, then the producer, then consumers, then say ready;
on SIGTERM stop fetching, finish the message in flight, commit, flush, close.

`bootstrap.py` of each service gets a `Runtime`, acquires what it needs through it
(each resource is released in reverse order at shutdown) and adds its workers and its
periodic rounds (`every`).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from libs.contracts.settings import ServiceSettings
from libs.db.migrations import migrate
from libs.db.pool import DatabaseUnavailable, create_pool
from libs.kafka.admin import ensure_topics
from libs.kafka.consumer import AnyRoute, RetryPolicy, StageConsumer
from libs.kafka.producer import Producer
from libs.runtime import gc_tuning
from libs.runtime.logging import configure_logging, get_logger
from libs.runtime.metrics import ConsumerMetrics, DiskCollector, ProducerMetrics
from libs.runtime.periodic import Exclusive, Round, pause, periodically
from libs.runtime.probes import Readiness, http_server, ops_app
from libs.runtime.profiling import profiled

log = get_logger(__name__)
Worker = Callable[[], Coroutine[Any, Any, None]]
DRAIN_SECONDS = 30.0


class Runtime:
    def __init__(self, name: str, settings: ServiceSettings) -> None:
        self.name = name
        self.settings = settings
        self.registry = CollectorRegistry()
        self.readiness = Readiness()
        self.stopping = asyncio.Event()
        self.resources = AsyncExitStack()
        self.workers: list[tuple[str, Worker]] = []
        self.app: FastAPI | None = None  # the API serves its own app; others get ops_app
        self._producer: Producer | None = None
        self._consumer_metrics: ConsumerMetrics | None = None
        self._disks: DiskCollector | None = None

    async def pool(self) -> asyncpg.Pool:
        pool = await create_pool(self.settings.database_url, size=self.settings.database_pool_size)
        self.resources.push_async_callback(pool.close)
        await migrate(pool)

        async def database() -> bool:
            return bool(await pool.fetchval("SELECT 1"))

        self.readiness.add("database", database)
        return pool

    async def producer(self) -> Producer:
        if self._producer is None:
            s = self.settings
            await ensure_topics(
                s.kafka,
                partitions=s.kafka_topic_partitions,
                replication_factor=s.kafka_replication_factor,
            )
            producer = Producer(
                s.kafka,
                idempotence=s.kafka_enable_idempotence,
                metrics=ProducerMetrics.create(self.name, self.registry),
                client_id=f"dicomflow-{self.name}",
                linger_ms=s.producer_linger_ms,
            )
            await producer.start()
            self.resources.push_async_callback(producer.stop)
            self._producer = producer
        return self._producer

    async def consumer(
        self,
        routes: Mapping[str, AnyRoute],
        *,
        group_id: str | None = None,
        metrics: ConsumerMetrics | None = None,
        dead_letters: bool = True,
        overlap: int = 1,
    ) -> StageConsumer:
        s = self.settings
        consumer = StageConsumer(
            stage=self.name,
            group_id=group_id or f"dicomflow-{self.name}",
            routes=routes,
            bootstrap_servers=s.kafka,
            producer=await self.producer(),
            metrics=metrics or self.consumer_metrics(),
            stopping=self.stopping,
            retry=RetryPolicy(s.max_retries, s.retry_backoff_seconds),
            batch_size=s.batch_size,
            concurrency=s.concurrency,
            dead_letters=dead_letters,
            session_timeout_ms=s.kafka_session_timeout_ms,
            overlap=overlap,
            linger_ms=s.batch_linger_ms,
        )
        await consumer.start()
        self.resources.push_async_callback(consumer.stop)

        async def kafka() -> bool:
            return consumer.healthy

        self.readiness.add(f"consumer:{','.join(routes)}", kafka)
        self.add_worker("consumer", consumer.run)
        return consumer

    def consumer_metrics(self) -> ConsumerMetrics:
        """One set per service, shared by its consumers (topic is a label)."""
        if self._consumer_metrics is None:
            self._consumer_metrics = ConsumerMetrics.create(self.name, self.registry)
        return self._consumer_metrics

    def watch_disk(self, volume: str, path: Path) -> None:
        """Export free/total bytes of the volume holding `path` (alert: disk low)."""
        if self._disks is None:
            self._disks = DiskCollector()
            self.registry.register(self._disks)
        self._disks.volumes[volume] = path

    def add_worker(self, name: str, worker: Worker) -> None:
        self.workers.append((name, worker))

    def every(
        self,
        name: str,
        seconds: float,
        fn: Round,
        *,
        single_reader: Exclusive | None = None,
        wait_first: bool = False,
    ) -> None:
        """Run the round `fn` every `seconds` while the service runs (libs.runtime.periodic)."""
        self.add_worker(
            name,
            partial(
                periodically,
                self.stopping,
                name,
                seconds,
                fn,
                single_reader=single_reader,
                wait_first=wait_first,
            ),
        )

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; returns False when the service is stopping."""
        return await pause(self.stopping, seconds)


async def serve(
    name: str, settings: ServiceSettings, wire: Callable[[Runtime], Awaitable[None]]
) -> int:
    """Run a service until SIGTERM/SIGINT or until a worker fails; returns the exit code."""
    configure_logging(name, settings.log_level)
    with profiled(name, settings.profile_dir):
        return await _serve(name, settings, wire)


async def _serve(
    name: str, settings: ServiceSettings, wire: Callable[[Runtime], Awaitable[None]]
) -> int:
    rt = Runtime(name, settings)
    log.info("starting", settings=settings.redacted())
    loop = asyncio.get_running_loop()
    # Blocking file I/O (fsync above all) runs in threads: enough for every message in flight.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=max(8, 2 * settings.concurrency)))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, rt.stopping.set)

    server = None
    exit_code = 0
    async with rt.resources:
        try:
            await wire(rt)
        except (DatabaseUnavailable, ValueError) as exc:  # configuration or environment
            log.error("cannot start", error=str(exc))
            return 2
        gc_tuning.tune()  # what wiring built lives as long as the process
        app = rt.app or ops_app(name, rt.readiness, rt.registry)
        server = http_server(app, settings.ops_host, settings.ops_port, settings.http_tls)
        server_task = asyncio.create_task(server.serve(), name="http")
        tasks = [asyncio.create_task(w(), name=n) for n, w in rt.workers]
        rt.readiness.started = True
        log.info("ready", port=settings.ops_port, workers=[n for n, _ in rt.workers])
        stop_task = asyncio.create_task(rt.stopping.wait())
        done, _ = await asyncio.wait(
            [stop_task, server_task, *tasks], return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            if task is not stop_task and task.exception() is not None:
                log.error("worker failed", worker=task.get_name(), error=repr(task.exception()))
                exit_code = 1
        rt.stopping.set()
        rt.readiness.started = False
        log.info("stopping: finishing work in flight")
        _, late = await asyncio.wait(tasks, timeout=DRAIN_SECONDS) if tasks else (set(), set())
        for task in late:
            task.cancel()
        server.should_exit = True
        await asyncio.wait([server_task], timeout=DRAIN_SECONDS)
    log.info("stopped", exit_code=exit_code)
    return exit_code
