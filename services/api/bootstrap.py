"""Wires the real adapters: the PostgreSQL pool, the Kafka producer, storage and renderer."""

from __future__ import annotations

from functools import partial

import asyncpg
from prometheus_client import Gauge

from libs.db.tasks import count_by_status
from libs.imaging.isolated import IsolatedRenderer
from libs.runtime.metrics import TASK_STATES, import_tasks_gauge
from libs.runtime.service import Runtime
from libs.storage import open_store
from services.api.app import create_app
from services.api.config import ApiSettings
from services.api.previews import PreviewSource

TASK_METRICS_SECONDS = 5.0


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
    previews = PreviewSource(open_store(settings.storage_url), renderer)
    rt.app = create_app(
        pool,
        producer.publish,
        rt.registry,
        rt.readiness,
        limits=settings.limits(),
        previews=previews,
    )
    tasks = import_tasks_gauge(rt.name, rt.registry)
    rt.every("task-metrics", TASK_METRICS_SECONDS, partial(count_tasks, pool, tasks))


async def count_tasks(pool: asyncpg.Pool, gauge: Gauge) -> None:
    """Import tasks by state, for the dashboards and the task-failed alert."""
    async with pool.acquire() as conn:
        counts = await count_by_status(conn)
    for state in TASK_STATES:
        gauge.labels(state).set(counts.get(state, 0))
