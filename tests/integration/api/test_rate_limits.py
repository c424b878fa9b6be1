"""Rate limits per API key and per client address: 429 with Retry-After, before the key is
even looked up, so one key (or one address trying keys) cannot exhaust the API; DICOMweb
(`/dicom-web`, `/wado`) in windows of its own; a signed-in browser counted against its key."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry

from libs.db.apikeys import create_key
from libs.db.sessions import create_session
from libs.http.auth import SESSION_COOKIE
from libs.imaging.isolated import IsolatedRenderer
from libs.runtime.probes import Readiness
from libs.storage.local import LocalStore
from services.api.app import create_app
from services.api.config import ApiLimits
from services.api.dicomweb import DicomWebPorts
from services.api.previews import PreviewSource
from tests.integration.api.dicomweb_app import renderer, store  # noqa: F401 - fixtures


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


@pytest.fixture
def dicomweb_limited(
    pool: asyncpg.Pool,
    store: LocalStore,  # noqa: F811 - the fixture
    renderer: IsolatedRenderer,  # noqa: F811 - the fixture
) -> object:
    limits = ApiLimits(
        rate_per_key="3/minute",
        rate_per_address="100/minute",
        dicomweb_rate_per_key="4/minute",
        dicomweb_rate_per_address="100/minute",
    )

    async def publish(event: object) -> None:
        return None

    ports = DicomWebPorts(store, PreviewSource(store, renderer), renderer.executor)
    return create_app(
        pool, publish, CollectorRegistry(), Readiness(), limits=limits, dicomweb=ports
    )


async def test_dicomweb_is_limited_in_a_window_of_its_own(
    dicomweb_limited: object, pool: asyncpg.Pool
) -> None:
    """QIDO pages (500 rows each) and /wado count against the key's DICOMweb limit; beyond
    it, 429 with Retry-After; /v1 has its own window."""
    async with pool.acquire() as conn:
        _, key = await create_key(conn, "clinician", "viewer")
    async with client(dicomweb_limited, "10.0.0.3") as c:
        for _ in range(3):
            found = await c.get("/dicom-web/studies", params={"limit": "500"}, headers=bearer(key))
            assert found.status_code == 204, found.text  # an empty index: no match
        wado = await c.get("/wado", params={"requestType": "WADO"}, headers=bearer(key))
        assert wado.status_code == 400  # counted (it reached the route), 4 of 4
        refused = await c.get("/dicom-web/studies", headers=bearer(key))
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "per key" in refused.json()["detail"]
        assert (await c.get("/wado", headers=bearer(key))).status_code == 429
        assert (await c.get("/dicom-web/series", headers=bearer(key))).status_code == 429
        assert (await c.get("/v1/studies", headers=bearer(key))).status_code == 200


async def test_a_signed_in_browser_is_limited_by_its_sessions_key(
    dicomweb_limited: object, pool: asyncpg.Pool
) -> None:
    """A session cookie counts against its key: the key's bearer requests and each of its
    sessions share one window (a new session does not reset it); another key's does not."""
    async with pool.acquire() as conn:
        key_id, key = await create_key(conn, "clinician", "browser")
        first, _ = await create_session(conn, key_id, 3600)
        second, _ = await create_session(conn, key_id, 3600)
        other_id, _ = await create_key(conn, "clinician", "other")
        other, _ = await create_session(conn, other_id, 3600)
    async with client(dicomweb_limited, "10.0.0.4") as c:
        assert (await c.get("/v1/studies", headers=bearer(key))).status_code == 200
        for token in (first, second):
            response = await c.get("/v1/studies", headers=cookie(token))
            assert response.status_code == 200, response.text
        refused = await c.get("/v1/studies", headers=cookie(second))  # 4th of the key's 3
        assert refused.status_code == 429 and "per key" in refused.json()["detail"]
        assert (await c.get("/v1/studies", headers=bearer(key))).status_code == 429
        assert (await c.get("/v1/studies", headers=cookie(other))).status_code == 200
        # A cookie that names no session gets a window of its own (and a 401).
        made_up = "dfs_" + "A" * 43
        for _ in range(3):
            assert (await c.get("/v1/studies", headers=cookie(made_up))).status_code == 401
        assert (await c.get("/v1/studies", headers=cookie(made_up))).status_code == 429


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={token}"}
