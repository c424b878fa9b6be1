"""Browser sessions: sign in with a key, carry a cookie, sign out; expiry, revocation, CSRF."""

from __future__ import annotations

import httpx

from libs.db import apikeys
from libs.http.auth import SESSION_COOKIE

ORIGIN = {"Origin": "http://api.test"}


async def _sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post("/v1/session", json={"key": key}, headers=ORIGIN)


async def test_sign_in_sets_a_strict_httponly_cookie_and_the_cookie_authenticates(
    client, keys, audit_rows
):
    response = await _sign_in(client, keys.plain["clinician"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["role"] == "clinician" and body["expires_at"]
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=dfs_")
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=28800"):
        assert attribute.lower() in cookie.lower(), cookie
    assert keys.plain["clinician"] not in cookie
    assert response.headers["cache-control"] == "no-store"

    studies = await client.get("/v1/studies")  # no Authorization header: the cookie alone
    assert studies.status_code == 200, studies.text
    me = await client.get("/v1/session")
    assert me.status_code == 200 and me.json()["expires_at"] == body["expires_at"]
    created = (await audit_rows("session.create"))[-1]
    assert (created["status_code"], created["role"]) == (200, "clinician")
    assert keys.plain["clinician"] not in str(created)


async def test_the_session_keeps_the_role_of_its_key(client, keys):
    await _sign_in(client, keys.plain["clinician"])
    denied = await client.get("/v1/imports")
    assert denied.status_code == 403


async def test_a_bad_key_is_refused_and_audited(client, audit_rows):
    before = len(await audit_rows("session.create"))
    for key in ("dfk_" + "A" * 43, "not a key"):
        response = await _sign_in(client, key)
        assert response.status_code == 401
        assert "set-cookie" not in response.headers
    refused = (await audit_rows("session.create"))[before:]
    assert [(r["status_code"], r["api_key_id"]) for r in refused] == [(401, None), (401, None)]
    assert (await client.get("/v1/studies")).status_code == 401


async def test_sign_out_ends_the_session_on_the_server(client, keys):
    await _sign_in(client, keys.plain["ops"])
    token = client.cookies[SESSION_COOKIE]
    out = await client.delete("/v1/session", headers=ORIGIN)
    assert out.status_code == 204
    assert SESSION_COOKIE not in client.cookies
    # A copy of the old cookie (kept by someone else) no longer works either.
    client.cookies.set(SESSION_COOKIE, token)
    replay = await client.get("/v1/studies")
    assert replay.status_code == 401


async def test_revoking_the_key_ends_its_sessions(client, keys, pool):
    await _sign_in(client, keys.plain["clinician"])
    assert (await client.get("/v1/studies")).status_code == 200
    async with pool.acquire() as conn:
        key = await apikeys.verify_key(conn, keys.plain["clinician"])
        assert key is not None
        await apikeys.revoke_key(conn, key.id)
    assert (await client.get("/v1/studies")).status_code == 401


async def test_an_expired_session_is_refused(client, keys, pool):
    await _sign_in(client, keys.plain["clinician"])
    await pool.execute("UPDATE api_sessions SET expires_at = now() - interval '1 second'")
    assert (await client.get("/v1/studies")).status_code == 401


async def test_cookie_requests_that_change_things_must_come_from_this_site(client, keys, publisher):
    await _sign_in(client, keys.plain["ops"])
    body = {"source_path": "/nas/csrf"}
    foreign = await client.post("/v1/imports", json=body, headers={"Origin": "http://evil.test"})
    assert foreign.status_code == 403
    unnamed = await client.post("/v1/imports", json=body)  # neither Origin nor Referer
    assert unnamed.status_code == 403
    assert publisher.events == []
    ours = await client.post("/v1/imports", json=body, headers=ORIGIN)
    assert ours.status_code == 202, ours.text
    # A bearer key is not a browser: no Origin needed.
    bearer = await client.post(
        "/v1/imports", json=body, headers={"Authorization": f"Bearer {keys.plain['ops']}"}
    )
    assert bearer.status_code == 202


async def test_sign_in_from_another_site_is_refused(client, keys):
    response = await client.post(
        "/v1/session", json={"key": keys.plain["clinician"]}, headers={"Origin": "http://evil.test"}
    )
    assert response.status_code == 403
    assert "set-cookie" not in response.headers
