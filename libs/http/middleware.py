"""Two small ASGI middlewares: request metrics (outermost; also turns an unhandled error into
a JSON 500 without a stack trace) and the audit log (a row per audited request)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.datastructures import QueryParams
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.db.audit import AuditEntry, write_audit
from libs.http.auth import AUDIT_STATE, CONNECTION_STATE, AuditContext, RequestConnection
from libs.runtime.logging import get_logger
from libs.runtime.metrics import LATENCY_BUCKETS, metric_prefix

log = get_logger(__name__)


@dataclass(frozen=True)
class ApiMetrics:
    requests: Counter
    seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry, service: str = "api") -> ApiMetrics:
        """`dicomflow_<service>_requests_total` and `..._request_seconds`."""
        p = metric_prefix(service)
        return cls(
            requests=Counter(
                f"{p}_requests_total",
                "HTTP requests, by route template, method and status.",
                ["route", "method", "status"],
                registry=registry,
            ),
            seconds=Histogram(
                f"{p}_request_seconds",
                "Time to answer one HTTP request.",
                ["route", "method"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
        )


def _route(scope: Scope) -> str:
    """The route template (`/v1/studies/{study_uid}`), never the raw path, so labels stay
    bounded; `other` for unknown paths, redirects and FastAPI's own /docs and /openapi.json
    (which do not set the route in this FastAPI version)."""
    route = scope.get("route")
    return str(getattr(route, "path", "other"))


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = False

        async def send_status(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            log.exception("unhandled error", method=scope["method"], route=_route(scope))
            if started:
                raise
            await JSONResponse({"detail": "internal server error"}, 500)(scope, receive, send)
        finally:
            route, method = _route(scope), scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.seconds.labels(route, method).observe(time.perf_counter() - start)


def _query(scope: Scope) -> dict[str, Any]:
    params = QueryParams(scope.get("query_string", b""))
    return {k: (v[0] if len(v) == 1 else v) for k in params for v in [params.getlist(k)]}


def _entry(scope: Scope, audit: AuditContext, status: int) -> AuditEntry:
    client = scope.get("client")
    return AuditEntry(
        action=audit.action,
        method=scope["method"],
        path=scope["path"],
        status_code=status,
        api_key_id=audit.key.id if audit.key else None,
        role=audit.key.role if audit.key else None,
        query={**_query(scope), **audit.details},
        result_count=audit.result_count,
        client=client[0] if client else None,
    )


class AuditMiddleware:
    """Writes the audit row before the response starts; no audit row, no response (503).
    A request whose route shares one connection (`RequestConnection`) writes its row on
    that connection, which is then released; if it has been lost, on one from the pool."""

    def __init__(self, app: ASGIApp, pool: asyncpg.Pool) -> None:
        self.app = app
        self.pool = pool

    async def _write(self, scope: Scope, status: int) -> bool:
        state = scope.get("state", {})
        audit = state.get(AUDIT_STATE)
        shared = state.get(CONNECTION_STATE)
        try:
            if not isinstance(audit, AuditContext):
                return True  # not an audited route (ops routes, docs, unknown paths)
            entry = _entry(scope, audit, status)
            conn = shared.live() if isinstance(shared, RequestConnection) else None
            if conn is not None:
                try:
                    await write_audit(conn, entry)
                    return True
                except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
                    log.warning("request connection lost; audit row on another", exc_info=True)
            async with self.pool.acquire() as fresh:
                await write_audit(fresh, entry)
        except Exception:
            log.exception("audit write failed", action=audit.action, status=status)
            return False
        finally:
            await _release(scope)
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        blocked = False
        started = False

        async def send_audited(message: Message) -> None:
            nonlocal blocked, started
            if message["type"] == "http.response.start":
                started = True
                if not await self._write(scope, message["status"]):
                    blocked = True
                    unavailable = JSONResponse({"detail": "audit log unavailable"}, 503)
                    await unavailable(scope, receive, send)
                    return
            if not blocked:
                await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except Exception:
            if not started:
                await self._write(scope, 500)
            raise
        finally:
            await _release(scope)


async def _release(scope: Scope) -> None:
    """Give the request's shared connection back to the pool (once; later calls do nothing).
    A connection the pool fails to reset is closed by the pool; the request goes on."""
    shared = scope.get("state", {}).get(CONNECTION_STATE)
    if isinstance(shared, RequestConnection):
        try:
            await shared.release()
        except Exception:
            log.warning("request connection not reset; closed", exc_info=True)
