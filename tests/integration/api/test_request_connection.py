"""The study search and the study detail take one pooled connection a request for the key
lookup, their queries and the audit row (each taken from the pool and given back costs a
reset round trip), give it back whatever the outcome, and still write the audit row when
that connection has been lost."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from libs.db import search
from libs.http.auth import RequestConnection


@pytest.fixture
def acquired(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many connections have been taken from a pool (one entry each)."""
    taken: list[int] = []
    real = asyncpg.pool.Pool.acquire

    def counting(self: asyncpg.Pool, *args: Any, **kwargs: Any) -> Any:
        taken.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(asyncpg.pool.Pool, "acquire", counting)
    return taken


def all_idle(pool: asyncpg.Pool) -> bool:
    return pool.get_idle_size() == pool.get_size()


@pytest.mark.parametrize(
    "path", ["/v1/studies?patient_name=doe", "/v1/studies/1.2.3.4", "/v1/studies?modality=CT"]
)
async def test_one_connection_for_key_query_and_audit(
    client, keys, audit_rows, acquired, pool, path
):
    before = len(await audit_rows("study.search")) + len(await audit_rows("study.read"))
    acquired.clear()
    response = await client.get(path, headers=keys.headers("clinician"))
    taken = len(acquired)
    assert response.status_code in (200, 404)
    assert taken == 1
    after = len(await audit_rows("study.search")) + len(await audit_rows("study.read"))
    assert after == before + 1
    assert all_idle(pool)


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/studies", {"Authorization": "Bearer dfk_" + "x" * 43}, 401),  # unknown key
        ("/v1/studies?year=0", None, 422),  # invalid query, after the key was looked up
        ("/v1/studies?limit=100000", None, 422),  # raised inside the route
    ],
)
async def test_the_connection_goes_back_whatever_the_outcome(
    client, keys, audit_rows, pool, path, headers, status
):
    before = len(await audit_rows("study.search")) + len(await audit_rows("request.rejected"))
    response = await client.get(path, headers=headers or keys.headers("clinician"))
    assert response.status_code == status
    after = len(await audit_rows("study.search")) + len(await audit_rows("request.rejected"))
    assert after == before + 1
    assert all_idle(pool)


async def test_a_lost_connection_still_gets_its_audit_row(
    client, keys, audit_rows, pool, monkeypatch
):
    async def lose_it(conn: Any, *_args: Any, **_kwargs: Any) -> Any:
        conn.terminate()
        raise asyncpg.ConnectionDoesNotExistError("connection was closed")

    monkeypatch.setattr(search, "search_studies", lose_it)
    response = await client.get("/v1/studies", headers=keys.headers("clinician"))
    assert response.status_code == 500
    [*_, row] = await audit_rows("study.search")
    assert row["status_code"] == 500
    assert all_idle(pool)


async def test_a_connection_the_pool_cannot_reset_does_not_fail_the_answer(
    client, keys, audit_rows, pool, monkeypatch
):
    real = RequestConnection.release

    async def reset_fails(self: RequestConnection) -> None:
        await real(self)
        raise asyncpg.InterfaceError("reset failed")

    monkeypatch.setattr(RequestConnection, "release", reset_fails)
    before = len(await audit_rows("study.search"))
    response = await client.get("/v1/studies", headers=keys.headers("clinician"))
    assert response.status_code == 200
    assert len(await audit_rows("study.search")) == before + 1
    assert all_idle(pool)
