"""Wires the real adapters: the PostgreSQL pool, the Kafka producer, storage and renderer."""

from __future__ import annotations

from functools import partial

from prometheus_client import Counter

from libs.db.tasks import count_by_status
from libs.imaging.isolated import IsolatedRenderer
from libs.logging import get_logger
from libs.metrics import TASK_STATES, import_tasks_gauge
from libs.runtime import Runtime
from libs.staging_cleanup import Retention, StagingCleanup
from libs.storage import open_store
from services.api.app import create_app
from services.api.config import ApiSettings
from services.api.dicomweb import DicomWebPorts, StowLimits
from services.api.previews import PreviewSource
from services.api.viewer import ViewerFiles

log = get_logger(__name__)
TASK_METRICS_SECONDS = 5.0
STOW_CLEANUP_SECONDS = 600.0


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
    previews = PreviewSource(storage, renderer)
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
    )
    tasks = import_tasks_gauge(rt.name, rt.registry)

    async def count_tasks() -> None:
        """Import tasks by state, for the dashboards and the task-failed alert."""
        while True:
            try:
                async with pool.acquire() as conn:
                    counts = await count_by_status(conn)
                for state in TASK_STATES:
                    tasks.labels(state).set(counts.get(state, 0))
            except Exception as exc:  # the database is back next round; /ready says so
                log.warning("import task count failed", error=repr(exc))
            if not await rt.sleep(TASK_METRICS_SECONDS):
                return

    rt.add_worker("task-metrics", count_tasks)
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
    rt.add_worker("stow-staging-cleanup", partial(cleanup.run, rt, STOW_CLEANUP_SECONDS))
