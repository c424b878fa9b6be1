"""Browser sign-in: an API key is exchanged once for an HttpOnly, SameSite=Strict session
cookie, so pages (the study browser, the viewer) never hold the key itself.

`POST /v1/session` signs in, `GET /v1/session` says who is signed in, `DELETE /v1/session`
signs out. Each is audited; a failed sign-in is audited too (status 401, no key).
"""

from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Request, Response

from libs.db import apikeys, sessions
from libs.http.auth import (
    AUDIT_STATE,
    SESSION_COOKIE,
    AuditContext,
    Authenticator,
    Caller,
    same_origin,
    unauthorized,
)
from services.api.config import ApiLimits
from services.api.schemas import SessionCreate, SessionOut


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def session_router(pool: asyncpg.Pool, auth: Authenticator, limits: ApiLimits) -> APIRouter:
    router = APIRouter(prefix="/v1/session", tags=["session"])
    viewer = Depends(auth.require("read", "session.show"))

    @router.post("", response_model=SessionOut, operation_id="sign_in")
    async def sign_in(body: SessionCreate, request: Request, response: Response) -> SessionOut:
        """Sign a browser in with an API key: sets the `dicomflow_session` cookie (HttpOnly,
        SameSite=Strict, expires after `API_SESSION_HOURS`). 401 for an unknown, revoked or
        malformed key."""
        audit = AuditContext("session.create")
        setattr(request.state, AUDIT_STATE, audit)
        if "origin" in request.headers and not same_origin(request):
            raise HTTPException(status_code=403, detail="sign in from this site's own pages")
        seconds = limits.session_hours * 3600
        async with pool.acquire() as conn, conn.transaction():
            key = await apikeys.verify_key(conn, body.key)
            if key is None:
                raise unauthorized()
            token, expires = await sessions.create_session(conn, key.id, seconds)
        audit.key, audit.result_count = key, 1
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=int(seconds),
            path="/",
            httponly=True,
            samesite="strict",
            secure=_secure(request),
        )
        response.headers["cache-control"] = "no-store"
        return SessionOut(
            name=key.name, role=key.role, key_prefix=key.key_prefix, expires_at=expires
        )

    @router.get("", response_model=SessionOut, operation_id="who_am_i")
    async def who_am_i(request: Request, caller: Annotated[Caller, viewer]) -> SessionOut:
        """Who the caller is; with a session cookie, also when the session ends."""
        expires = None
        token = request.cookies.get(SESSION_COOKIE)
        if token and "authorization" not in request.headers:
            async with pool.acquire() as conn:
                found = await sessions.session_key(conn, token)
            expires = found[1] if found else None
        caller.saw(1)
        key = caller.key
        return SessionOut(
            name=key.name, role=key.role, key_prefix=key.key_prefix, expires_at=expires
        )

    @router.delete("", status_code=204, operation_id="sign_out")
    async def sign_out(request: Request) -> Response:
        """Sign out: the session ends on the server and the cookie is cleared. Always 204, so
        a page can sign out even after its session expired."""
        audit = AuditContext("session.end")
        setattr(request.state, AUDIT_STATE, audit)
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            if not same_origin(request):
                raise HTTPException(status_code=403, detail="sign out from this site's own pages")
            async with pool.acquire() as conn:
                found = await sessions.session_key(conn, token)
                audit.key = found[0] if found else None
                audit.result_count = int(await sessions.end_session(conn, token))
        response = Response(status_code=204)
        response.delete_cookie(
            SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request)
        )
        return response

    return router
