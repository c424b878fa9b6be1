"""API fixtures: one database per test module (the root `pool` fixture connects to it), the
app built around it with a recording `publish`, an HTTP client, and a key per role."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from libs.contracts.events import Event
from libs.db.apikeys import create_key
from libs.runtime.probes import Readiness
from services.api.app import create_app
from services.api.config import ApiLimits

PG_SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")


async def _drop(name: str) -> None:
    conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """Overrides the root fixture: one database per module (created by the root `pool`)."""
    name = f"dicomflow_test_{uuid.uuid4().hex[:12]}"
    yield f"{PG_SERVER}/{name}"
    asyncio.run(_drop(name))


class RecordingPublisher:
    """The `publish` port: records events; can be told to fail or to hang."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.error: Exception | None = None
        self.hang = False

    async def publish(self, *events: Event) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        self.events.extend(events)


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def app(pool: asyncpg.Pool, publisher: RecordingPublisher, registry: CollectorRegistry) -> FastAPI:
    limits = ApiLimits(publish_timeout_seconds=0.5)
    return create_app(pool, publisher.publish, registry, Readiness(), limits=limits)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app, client=("10.1.2.3", 4567))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        yield c


@dataclass(frozen=True)
class Keys:
    """One fresh key per role."""

    plain: dict[str, str]

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.plain[role]}"}


@pytest.fixture
async def keys(pool: asyncpg.Pool) -> Keys:
    plain = {}
    async with pool.acquire() as conn:
        for role in ("clinician", "ops", "admin"):
            _, plain[role] = await create_key(conn, role, f"test {role}")
    return Keys(plain)


AuditRows = Callable[[str], Awaitable[list[dict[str, Any]]]]


@pytest.fixture
def audit_rows(pool: asyncpg.Pool) -> AuditRows:
    """The audit_log rows of one action, oldest first."""

    async def rows(action: str) -> list[dict[str, Any]]:
        found = await pool.fetch("SELECT * FROM audit_log WHERE action = $1 ORDER BY id", action)
        return [dict(r) for r in found]

    return rows
