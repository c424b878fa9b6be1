"""Bearer keys, roles, key administration, audit of denials, ops routes, errors and metrics."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from libs.db import apikeys

STUDIES = ("GET", "/v1/studies", None)
IMPORTS = ("GET", "/v1/imports", None)
CREATE_IMPORT = ("POST", "/v1/imports", {"source_path": "/nas/roles"})
KEYS = ("GET", "/v1/apikeys", None)
CALLS = {"studies": STUDIES, "imports": IMPORTS, "create_import": CREATE_IMPORT, "keys": KEYS}
ALLOWED = {
    "clinician": {"studies"},
    "ops": {"studies", "imports", "create_import"},
    "admin": {"studies", "imports", "create_import", "keys"},
}


async def _call(client: httpx.AsyncClient, call: str, headers: dict[str, str]) -> httpx.Response:
    method, path, body = CALLS[call]
    return await client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("role", sorted(ALLOWED))
@pytest.mark.parametrize("call", sorted(CALLS))
async def test_roles(client, keys, role, call):
    response = await _call(client, call, keys.headers(role))
    if call in ALLOWED[role]:
        assert response.status_code in (200, 202), response.text
    else:
        assert response.status_code == 403
        assert response.json() == {"detail": f"role '{role}' may not use this endpoint"}


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-key",
        "Bearer dfk_" + "A" * 43,  # well formed, unknown
    ],
)
@pytest.mark.parametrize("call", sorted(CALLS))
async def test_without_a_valid_key_is_401(client, authorization, call):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await _call(client, call, headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"detail": "missing, invalid or revoked API key"}


async def test_denials_are_audited(client, keys, audit_rows, pool):
    await client.get("/v1/studies", params={"patient_id": "P1"})
    await client.post("/v1/imports", json={"source_path": "/x"}, headers=keys.headers("clinician"))
    [*_, anonymous] = await audit_rows("study.search")
    assert anonymous["status_code"] == 401
    assert anonymous["api_key_id"] is None and anonymous["role"] is None
    assert anonymous["query"] == {"patient_id": "P1"}
    assert anonymous["result_count"] is None
    [*_, forbidden] = await audit_rows("import.create")
    clinician_id = await pool.fetchval(
        "SELECT id FROM api_keys WHERE key_hash = $1", apikeys.hash_key(keys.plain["clinician"])
    )
    assert (forbidden["api_key_id"], forbidden["role"], forbidden["status_code"]) == (
        clinician_id,
        "clinician",
        403,
    )
    assert await pool.fetchval("SELECT count(*) FROM import_tasks WHERE source_path = '/x'") == 0


async def test_created_key_is_shown_once_and_stored_hashed(client, keys, pool, audit_rows):
    response = await client.post(
        "/v1/apikeys",
        json={"role": "clinician", "name": "radiology"},
        headers=keys.headers("admin"),
    )
    assert response.status_code == 201
    created = response.json()
    plaintext = created["key"]
    assert plaintext.startswith("dfk_") and len(plaintext) == 47
    assert (created["role"], created["name"], created["key_prefix"]) == (
        "clinician",
        "radiology",
        plaintext[:8],
    )
    row = await pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", created["id"])
    assert row["key_hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    everything = await pool.fetchval("SELECT string_agg(t::text, '|') FROM api_keys t")
    assert plaintext not in everything
    audit_log = await pool.fetchval("SELECT string_agg(a::text, '|') FROM audit_log a")
    assert plaintext[8:] not in audit_log
    # It works, and the listing never shows a key again.
    works = await client.get("/v1/studies", headers={"Authorization": f"Bearer {plaintext}"})
    assert works.status_code == 200
    listed = await client.get("/v1/apikeys", headers=keys.headers("admin"))
    mine = [k for k in listed.json() if k["id"] == created["id"]]
    assert mine and "key" not in mine[0] and "key_hash" not in mine[0]
    [*_, audit] = await audit_rows("apikey.create")
    assert (audit["role"], audit["status_code"], audit["result_count"]) == ("admin", 201, 1)


async def test_revoked_key_is_refused_at_once(client, keys, pool):
    key_id = await pool.fetchval(
        "SELECT id FROM api_keys WHERE key_hash = $1", apikeys.hash_key(keys.plain["ops"])
    )
    revoke = await client.delete(f"/v1/apikeys/{key_id}", headers=keys.headers("admin"))
    assert revoke.status_code == 204
    response = await client.get("/v1/imports", headers=keys.headers("ops"))
    assert response.status_code == 401
    again = await client.delete(f"/v1/apikeys/{key_id}", headers=keys.headers("admin"))
    assert again.status_code == 404
    listed = await client.get("/v1/apikeys", headers=keys.headers("admin"))
    assert [k["revoked_at"] is not None for k in listed.json() if k["id"] == key_id] == [True]


@pytest.mark.parametrize("body", [{"role": "root"}, {"name": "no role"}, {"role": "ops", "x": 1}])
async def test_invalid_key_request_is_422(client, keys, body):
    response = await client.post("/v1/apikeys", json=body, headers=keys.headers("admin"))
    assert response.status_code == 422


async def test_last_used_is_written_at_most_once_a_minute(pool, keys):
    key_hash = apikeys.hash_key(keys.plain["clinician"])
    async with pool.acquire() as conn:
        first = await apikeys.verify_key(conn, keys.plain["clinician"])
        assert first is not None and first.last_used_at is not None
        second = await apikeys.verify_key(conn, keys.plain["clinician"])
        assert second is not None and second.last_used_at == first.last_used_at
        await conn.execute(
            "UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE key_hash = $1",
            key_hash,
        )
        third = await apikeys.verify_key(conn, keys.plain["clinician"])
        assert third is not None and third.last_used_at > first.last_used_at


async def test_ops_routes_need_no_key(client):
    assert (await client.get("/health")).json()["status"] == "alive"
    assert (await client.get("/ready")).status_code == 503  # the runtime says when it started
    assert (await client.get("/docs")).status_code == 200
    schema = (await client.get("/openapi.json")).json()
    assert {"/v1/studies", "/v1/studies/{study_uid}", "/v1/imports", "/v1/apikeys"} <= set(
        schema["paths"]
    )


async def test_metrics_count_requests_by_route_template(client, keys, registry):
    await client.get("/v1/studies/1.2.3", headers=keys.headers("clinician"))
    await client.get("/v1/studies/1.2.4", headers=keys.headers("clinician"))
    text = (await client.get("/metrics")).text
    assert "dicomflow_api_request_seconds_bucket" in text
    labels = {"route": "/v1/studies/{study_uid}", "method": "GET"}
    count = registry.get_sample_value("dicomflow_api_requests_total", {**labels, "status": "404"})
    assert count == 2
    assert registry.get_sample_value("dicomflow_api_request_seconds_count", labels) == 2


async def test_unexpected_error_is_a_json_500_without_trace(client, keys, monkeypatch, audit_rows):
    async def broken(*_args, **_kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr("libs.db.search.search_studies", broken)
    response = await client.get("/v1/studies", headers=keys.headers("clinician"))
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert "secret" not in response.text
    [*_, audit] = await audit_rows("study.search")
    assert audit["status_code"] == 500


async def test_no_audit_row_means_no_answer(client, keys, monkeypatch):
    async def unavailable(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("libs.http.middleware.write_audit", unavailable)
    response = await client.get("/v1/studies", headers=keys.headers("clinician"))
    assert response.status_code == 503
    assert response.json() == {"detail": "audit log unavailable"}


@pytest.mark.parametrize("body", [b"{not json", b'{"source_path": '])
async def test_malformed_body_is_401_before_422_and_audited(client, keys, audit_rows, body):
    """A malformed JSON body from an unknown caller: 401 (not a validation message that
    tells how the endpoint parses), and an audit row; an authenticated caller gets 422."""
    headers = {"Content-Type": "application/json"}
    before = len(await audit_rows("request.rejected"))  # one database per module
    response = await client.post("/v1/imports", content=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    [row] = (await audit_rows("request.rejected"))[before:]
    assert (row["status_code"], row["api_key_id"], row["path"]) == (401, None, "/v1/imports")
    response = await client.post(
        "/v1/imports", content=body, headers={**headers, **keys.headers("ops")}
    )
    assert response.status_code == 422
    rows = (await audit_rows("request.rejected"))[before:]
    assert [r["status_code"] for r in rows] == [401, 422] and rows[1]["role"] == "ops"
