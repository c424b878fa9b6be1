"""Wires the real adapters: the PostgreSQL pool and the Kafka producer."""

from __future__ import annotations

from libs.runtime import Runtime
from services.api.app import create_app
from services.api.config import ApiSettings


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    if not isinstance(settings, ApiSettings):
        raise TypeError("the API needs ApiSettings")
    pool = await rt.pool()
    producer = await rt.producer()
    rt.app = create_app(pool, producer.publish, rt.registry, rt.readiness, limits=settings.limits())
