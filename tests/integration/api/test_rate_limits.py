"""Rate limits per API key and per client address: 429 with Retry-After, before the key is
even looked up, so one key (or one address trying keys) cannot exhaust the API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry

from libs.db.apikeys import create_key
from libs.runtime.probes import Readiness
from services.api.app import create_app
from services.api.config import ApiLimits


@pytest.fixture
async def limited(pool: asyncpg.Pool) -> AsyncIterator[httpx.ASGITransport]:
    limits = ApiLimits(rate_per_key="5/minute", rate_per_address="8/minute")

    async def publish(event: object) -> None:
        return None

    app = create_app(pool, publish, CollectorRegistry(), Readiness(), limits=limits)
    yield app  # type: ignore[misc]


def client(app: object, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app, client=(address, 4567))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://api.test")


async def test_per_key_and_per_address_limits(limited: object, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        _, a = await create_key(conn, "clinician", "a")
        _, b = await create_key(conn, "clinician", "b")
    one, other = client(limited, "10.0.0.1"), client(limited, "10.0.0.2")
    async with one, other:
        for _ in range(5):
            assert (await one.get("/v1/studies", headers=bearer(a))).status_code == 200
        refused = await one.get("/v1/studies", headers=bearer(a))  # key a: 6th in a minute
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "per key" in refused.json()["detail"]
        for _ in range(2):  # the address has had 6 of its 8: key b gets two more
            assert (await one.get("/v1/studies", headers=bearer(b))).status_code == 200
        refused = await one.get("/v1/studies", headers=bearer(b))
        assert refused.status_code == 429 and "per address" in refused.json()["detail"]
        # Another address: key b has used 2 of its 5, key a none left.
        assert (await other.get("/v1/studies", headers=bearer(b))).status_code == 200
        assert (await other.get("/v1/studies", headers=bearer(a))).status_code == 429
        # Guessing keys from one address is limited the same way (no database lookup).
        guesses = [
            (await other.get("/v1/studies", headers=bearer(f"dfk_{n:043d}"))).status_code
            for n in range(10)
        ]
        assert guesses.count(401) == 6 and guesses[6:] == [429] * 4
        # Health and metrics are not limited.
        assert (await other.get("/health")).status_code == 200


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
