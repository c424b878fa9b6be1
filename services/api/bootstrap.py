"""Wires the real adapters: the PostgreSQL pool, the Kafka producer, storage and renderer."""

from __future__ import annotations

from functools import partial
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge

from libs.db.tasks import count_by_status
from libs.http.proxy import ProxyTimeouts, upstream_client
from libs.imaging.isolated import IsolatedRenderer
from libs.runtime.metrics import TASK_STATES, import_tasks_gauge
from libs.runtime.sandbox import IsolatedExecutor
from libs.runtime.service import Runtime
from libs.staging.cleanup import Retention, StagingCleanup
from libs.storage import open_store
from services.api.app import create_app
from services.api.config import ApiSettings
from services.api.dicomweb import DicomWebPorts, StowLimits
from services.api.exports import ExportLimits, ExportMetrics, ExportRunner
from services.api.previews import PreviewSource
from services.api.viewer import ViewerFiles

TASK_METRICS_SECONDS = 5.0
STOW_CLEANUP_SECONDS = 600.0
EXPORT_POLL_SECONDS = 2.0
EXPORT_EXPIRY_SECONDS = 600.0


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    if not isinstance(settings, ApiSettings):
        raise TypeError("the API needs ApiSettings")
    pool = await rt.pool()
    producer = await rt.producer()
    renderer = IsolatedRenderer(
        settings.render_workers, settings.render_memory_limit_mb, settings.render_timeout_seconds
    )
    rt.resources.callback(renderer.close)
    storage = open_store(settings.storage_url)
    previews = PreviewSource(
        storage,
        renderer,
        concurrency=settings.render_workers,
        queue=settings.render_queue,
    )
    stow = StowLimits(
        staging_dir=settings.stow_staging_dir,
        max_instance_bytes=settings.stow_max_instance_mb << 20,
        max_request_bytes=settings.stow_max_request_mb << 20,
        publish_timeout_seconds=settings.publish_timeout_seconds,
    )
    dicomweb = DicomWebPorts(
        storage,
        previews,
        renderer.executor,
        max_results=settings.max_page_size,
        publish=producer.publish,
        stow=stow,
    )
    packager = upstream_client(
        settings.packager_url,
        ProxyTimeouts(read=settings.packager_timeout_seconds),
        settings.packager_ca_bundle,
    )
    rt.resources.push_async_callback(packager.aclose)
    viewer = ViewerFiles.load(settings.viewer_dir) if settings.viewer_dir else None
    rt.app = create_app(
        pool,
        producer.publish,
        rt.registry,
        rt.readiness,
        limits=settings.limits(),
        previews=previews,
        viewer=viewer,
        dicomweb=dicomweb,
        packager=packager,
        exports_dir=settings.export_dir,
    )
    wire_exports(rt, settings, pool, storage)
    tasks = import_tasks_gauge(rt.name, rt.registry)
    rt.every("task-metrics", TASK_METRICS_SECONDS, partial(count_tasks, pool, tasks))
    settings.stow_staging_dir.mkdir(parents=True, exist_ok=True)
    cleanup = StagingCleanup(
        pool,
        owner=f"api-stow:{settings.stow_staging_dir.absolute()}",
        root=settings.stow_staging_dir,
        source_like="stow",
        retention=Retention(),
        removed=Counter(
            "dicomflow_api_stow_staging_removed_total",
            "STOW-RS staged copies removed, by kind (done, kept, orphan).",
            ["kind"],
            registry=rt.registry,
        ),
        hour_folders=True,
    )
    rt.every("stow-staging-cleanup", STOW_CLEANUP_SECONDS, cleanup.periodic)


async def count_tasks(pool: asyncpg.Pool, gauge: Gauge) -> None:
    """Import tasks by state, for the dashboards and the task-failed alert."""
    async with pool.acquire() as conn:
        counts = await count_by_status(conn)
    for state in TASK_STATES:
        gauge.labels(state).set(counts.get(state, 0))


def wire_exports(rt: Runtime, settings: ApiSettings, pool: asyncpg.Pool, storage: Any) -> None:
    """The de-identified export round: its own isolated pool (it parses stored files)."""
    executor = IsolatedExecutor(
        settings.export_workers,
        settings.export_memory_limit_mb,
        settings.export_timeout_seconds,
        preload=("libs.deid.files",),
    )
    rt.resources.callback(executor.close)
    settings.export_dir.mkdir(parents=True, exist_ok=True)
    runner = ExportRunner(
        pool,
        storage,
        executor,
        settings.export_dir,
        limits=ExportLimits(
            # Renewed after each instance: longer than the slowest one may take (its copy
            # out of storage, then at most the worker's time limit), so no other replica
            # takes over a job that is still running.
            lease_seconds=60.0 + 2 * settings.export_timeout_seconds,
            max_attempts=settings.export_max_attempts,
            retention_hours=settings.export_retention_hours,
        ),
        metrics=ExportMetrics.create(rt.registry),
        stopping=rt.stopping,
    )
    rt.every("exports", EXPORT_POLL_SECONDS, runner.round)
    rt.every("export-expiry", EXPORT_EXPIRY_SECONDS, runner.expire)
