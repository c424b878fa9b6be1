"""`/health` (the process is alive), `/ready` (its dependencies answer) and `/metrics`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Generator

import uvicorn
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from libs.contracts.settings import HttpTls

Check = Callable[[], Awaitable[bool]]


class Readiness:
    """Named dependency checks; ready when started and every check passes."""

    def __init__(self) -> None:
        self.started = False
        self.checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        self.checks[name] = check

    async def report(self) -> tuple[bool, dict[str, str]]:
        results: dict[str, str] = {"started": "ok" if self.started else "starting"}
        for name, check in self.checks.items():
            try:
                ok = await asyncio.wait_for(check(), timeout=2.0)
            except Exception as exc:  # a check that raises is a failed check
                ok = False
                results[name] = f"error: {type(exc).__name__}"
                continue
            results[name] = "ok" if ok else "failing"
        return all(v == "ok" for v in results.values()), results


def ops_router(service: str, readiness: Readiness, registry: CollectorRegistry) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "alive", "service": service}

    @router.get("/ready")
    async def ready() -> JSONResponse:
        ok, checks = await readiness.report()
        body = {"status": "ready" if ok else "not ready", "service": service, "checks": checks}
        return JSONResponse(body, status_code=200 if ok else 503)

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


def ops_app(service: str, readiness: Readiness, registry: CollectorRegistry) -> FastAPI:
    app = FastAPI(title=f"dicomflow {service}", docs_url=None, redoc_url=None)
    app.include_router(ops_router(service, readiness, registry))
    return app


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside our event loop; signals stay ours (the service drains on SIGTERM)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def http_server(app: FastAPI, host: str, port: int, tls: HttpTls | None = None) -> EmbeddedServer:
    """HTTP, or HTTPS with `tls` (the service's HTTPS_CERTFILE/HTTPS_KEYFILE)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(tls.certfile) if tls else None,
        ssl_keyfile=str(tls.keyfile) if tls else None,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=10,
    )
    return EmbeddedServer(config)
