"""API keys as bearer tokens, roles as permissions, and the audit context of each request.

Roles grant permissions: clinician reads studies; ops reads studies and manages imports;
admin may do everything, API keys included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import asyncpg
from fastapi import Depends, HTTPException, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from libs.db import apikeys
from libs.db.apikeys import ApiKey

Permission = Literal["read", "imports", "keys"]

GRANTS: dict[str, frozenset[Permission]] = {
    "clinician": frozenset({"read"}),
    "ops": frozenset({"read", "imports"}),
    "admin": frozenset({"read", "imports", "keys"}),
}
AUDIT_STATE = "audit"  # request.state attribute the audit middleware reads

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer dfk_...`")


def allowed(role: str, permission: Permission) -> bool:
    return permission in GRANTS.get(role, frozenset())


@dataclass
class AuditContext:
    """Filled while a request is handled; written to audit_log once the status is known."""

    action: str
    key: ApiKey | None = None
    result_count: int | None = None


@dataclass(frozen=True)
class Caller:
    """The authenticated, authorised caller of a route."""

    key: ApiKey
    audit: AuditContext

    @property
    def created_by(self) -> str:
        return f"apikey:{self.key.id}"

    def saw(self, count: int) -> None:
        """Record how many results the caller was given (audit_log.result_count)."""
        self.audit.result_count = count


def unauthorized() -> HTTPException:
    return HTTPException(
        status_code=401,
        detail="missing, invalid or revoked API key",
        headers={"WWW-Authenticate": "Bearer"},
    )


Guard = Callable[..., Awaitable[Caller]]


class Authenticator:
    """Builds one dependency per route: authenticate, authorise, and name the audit action."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def _key(self, token: str) -> ApiKey | None:
        async with self._pool.acquire() as conn:
            return await apikeys.verify_key(conn, token)

    def require(self, permission: Permission, action: str) -> Guard:
        async def guard(
            request: Request,
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        ) -> Caller:
            audit = AuditContext(action)
            setattr(request.state, AUDIT_STATE, audit)
            key = await self._key(credentials.credentials) if credentials else None
            if key is None:
                raise unauthorized()
            audit.key = key
            if not allowed(key.role, permission):
                raise HTTPException(
                    status_code=403, detail=f"role '{key.role}' may not use this endpoint"
                )
            return Caller(key=key, audit=audit)

        return guard

    async def invalid_request(self, request: Request, exc: Exception) -> Response:
        """A request FastAPI refused before the route's guard ran (a malformed JSON body, a
        bad parameter): an unknown caller gets 401, never a validation message, and either
        way the call is audited (`request.rejected`)."""
        assert isinstance(exc, RequestValidationError)
        audit = AuditContext("request.rejected")
        setattr(request.state, AUDIT_STATE, audit)
        credentials = await _bearer(request)
        audit.key = await self._key(credentials.credentials) if credentials else None
        if audit.key is None:
            error = unauthorized()
            return JSONResponse({"detail": error.detail}, 401, headers=error.headers)
        return await request_validation_exception_handler(request, exc)
