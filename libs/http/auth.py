"""API keys as bearer tokens (or a browser session made from one), roles as permissions, and
the audit context of each request.

Roles grant permissions: clinician reads studies; ops reads studies and manages imports;
admin may do everything, API keys included.

A browser signs in once (`POST /v1/session`) and then carries an HttpOnly, SameSite=Strict
cookie instead of the key, so the key never sits in a page, a URL or local storage. A
request authenticated by that cookie that changes something must also come from our own
origin (its `Origin`, or else `Referer`, names the host it was sent to): SameSite already
keeps the cookie off cross-site requests, and this check holds where a browser is lax.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from fastapi import Depends, HTTPException, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from libs.db import apikeys, sessions
from libs.db.apikeys import ApiKey

Permission = Literal["read", "imports", "keys"]

GRANTS: dict[str, frozenset[Permission]] = {
    "clinician": frozenset({"read"}),
    "ops": frozenset({"read", "imports"}),
    "admin": frozenset({"read", "imports", "keys"}),
}
AUDIT_STATE = "audit"  # request.state attribute the audit middleware reads
CONNECTION_STATE = "connection"  # the request's shared connection (RequestConnection), if any
SESSION_COOKIE = "dicomflow_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer dfk_...`")


def allowed(role: str, permission: Permission) -> bool:
    return permission in GRANTS.get(role, frozenset())


@dataclass
class AuditContext:
    """Filled while a request is handled; written to audit_log once the status is known."""

    action: str
    key: ApiKey | None = None
    result_count: int | None = None
    details: dict[str, Any] = field(default_factory=dict)  # beside the query in audit_log


class RequestConnection:
    """One pooled connection for a whole request: the key lookup, the route's queries and the
    audit row, instead of a connection (and the pool's reset round trip on its release) for
    each. The audit middleware releases it once the audit row is written; nothing may use it
    after the response has started."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: PoolConnectionProxy | None = None

    async def get(self) -> PoolConnectionProxy:
        if self._conn is None:
            self._conn = await self._pool.acquire()
        return self._conn

    def live(self) -> PoolConnectionProxy | None:
        """The connection, if one is held and still open."""
        conn = self._conn
        try:
            return conn if conn is not None and not conn.is_closed() else None
        except asyncpg.InterfaceError:  # closed under us: the pool has detached it
            return None

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.release(conn)


@dataclass(frozen=True)
class Caller:
    """The authenticated, authorised caller of a route."""

    key: ApiKey
    audit: AuditContext
    shared: RequestConnection | None = None

    async def connection(self) -> PoolConnectionProxy:
        """The request's one connection (a guard built with `one_connection=True`); the
        route must be done with it before its response starts."""
        if self.shared is None:
            raise RuntimeError("this route's guard holds no connection for the request")
        return await self.shared.get()

    @property
    def created_by(self) -> str:
        return f"apikey:{self.key.id}"

    def saw(self, count: int) -> None:
        """Record how many results the caller was given (audit_log.result_count)."""
        self.audit.result_count = count

    def note(self, **details: Any) -> None:
        """Record what a request body asked for (audit_log.query, beside the URL's query)."""
        self.audit.details.update(details)


def same_origin(request: Request) -> bool:
    """Whether the request says it was sent by a page of this origin (`Origin`, else
    `Referer`); a request that says neither is not taken as same-origin."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return False
    parsed = urlsplit(source)
    return parsed.netloc.lower() == request.headers.get("host", "").lower()


def unauthorized() -> HTTPException:
    return HTTPException(
        status_code=401,
        detail="missing, invalid or revoked API key",
        headers={"WWW-Authenticate": "Bearer"},
    )


Guard = Callable[..., Awaitable[Caller]]


def under(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether `path` is one of `prefixes` or below one (`/wado` and `/wado/x`, not `/wadox`)."""
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def validation_reason(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: `studyUID: Field required; ...`."""
    reasons = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ()) if part not in ("query", "path", "body")]
        where = ".".join(loc) or "request"
        reasons.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(reasons) or "invalid request"


class Authenticator:
    """Builds one dependency per route: authenticate, authorise, and name the audit action.

    `bad_request_paths`: path prefixes whose invalid requests are answered 400 with the reason
    instead of FastAPI's 422 (DICOMweb: PS3.18 answers a malformed request with 400)."""

    def __init__(self, pool: asyncpg.Pool, *, bad_request_paths: tuple[str, ...] = ()) -> None:
        self._pool = pool
        self._bad_request_paths = bad_request_paths

    async def _key(self, token: str, shared: RequestConnection | None) -> ApiKey | None:
        if shared is not None:
            return await apikeys.verify_key(await shared.get(), token)
        async with self._pool.acquire() as conn:
            return await apikeys.verify_key(conn, token)

    async def _session(self, request: Request, shared: RequestConnection | None) -> ApiKey | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        if shared is not None:
            found = await sessions.session_key(await shared.get(), token)
        else:
            async with self._pool.acquire() as conn:
                found = await sessions.session_key(conn, token)
        if found is None:
            return None
        if request.method not in SAFE_METHODS and not same_origin(request):
            raise HTTPException(
                status_code=403, detail="a signed-in browser may change things only from this site"
            )
        return found[0]

    async def identify(
        self, request: Request, bearer: str | None, shared: RequestConnection | None = None
    ) -> ApiKey | None:
        """The key of a request: its bearer token, else its session cookie."""
        if bearer is not None:
            return await self._key(bearer, shared)
        return await self._session(request, shared)

    def require(
        self, permission: Permission, action: str, *, one_connection: bool = False
    ) -> Guard:
        """`one_connection`: the key lookup, the route (`Caller.connection()`) and the audit
        row share one pooled connection. Only for a route that takes no other connection
        (a request would otherwise hold two) and is done with it before its response starts
        (no streamed body that reads the database)."""

        async def guard(
            request: Request,
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        ) -> Caller:
            audit = AuditContext(action)
            setattr(request.state, AUDIT_STATE, audit)
            shared = RequestConnection(self._pool) if one_connection else None
            if shared is not None:  # released by the audit middleware, whatever happens
                setattr(request.state, CONNECTION_STATE, shared)
            bearer = credentials.credentials if credentials else None
            key = await self.identify(request, bearer, shared)
            if key is None:
                raise unauthorized()
            audit.key = key
            if not allowed(key.role, permission):
                raise HTTPException(
                    status_code=403, detail=f"role '{key.role}' may not use this endpoint"
                )
            return Caller(key=key, audit=audit, shared=shared)

        return guard

    async def invalid_request(self, request: Request, exc: Exception) -> Response:
        """A request FastAPI refused before the route's guard ran (a malformed JSON body, a
        bad parameter): an unknown caller gets 401, never a validation message, and either
        way the call is audited (`request.rejected`)."""
        assert isinstance(exc, RequestValidationError)
        audit = AuditContext("request.rejected")
        setattr(request.state, AUDIT_STATE, audit)
        credentials = await _bearer(request)
        shared = getattr(request.state, CONNECTION_STATE, None)  # the guard's, if it ran
        try:  # a bearer key, or a signed-in browser's session cookie
            audit.key = await self.identify(
                request, credentials.credentials if credentials else None, shared
            )
        except HTTPException:  # a cookie request from another site: not a known caller here
            audit.key = None
        if audit.key is None:
            error = unauthorized()
            return JSONResponse({"detail": error.detail}, 401, headers=error.headers)
        if under(request.url.path, self._bad_request_paths):
            return JSONResponse({"detail": validation_reason(exc)}, 400)
        return await request_validation_exception_handler(request, exc)
