"""Wires the real adapters: the PostgreSQL pool, the Kafka producer, storage and renderer."""

from __future__ import annotations

from libs.imaging.isolated import IsolatedRenderer
from libs.runtime import Runtime
from libs.storage import open_store
from services.api.app import create_app
from services.api.config import ApiSettings
from services.api.previews import PreviewSource


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
