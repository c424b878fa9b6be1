"""The API application: routes, auth, audit and metrics around injected ports."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import asyncpg
import httpx
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry

from libs.db.sessions import session_key_digest
from libs.http.auth import SESSION_COOKIE, Authenticator
from libs.http.middleware import ApiMetrics, AuditMiddleware, MetricsMiddleware
from libs.http.ratelimit import RateLimitMiddleware, SessionKeys
from libs.runtime.probes import Readiness, ops_router
from services.api.config import ApiLimits
from services.api.dicomweb import DICOMWEB_PATHS, DicomWebPorts, dicomweb_router
from services.api.docs import add_local_docs
from services.api.previews import PreviewSource
from services.api.routes.apikeys import apikeys_router
from services.api.routes.archives import archives_router
from services.api.routes.exports import exports_router
from services.api.routes.imports import Publish, imports_router
from services.api.routes.instances import instances_router
from services.api.routes.previews import previews_router
from services.api.routes.retrieve import retrieve_router
from services.api.routes.session import session_router
from services.api.routes.studies import studies_router
from services.api.viewer import ViewerFiles, viewer_router
from services.api.web.router import web_router

DESCRIPTION = """Search the DICOM index, view instance previews, download studies and series
as archives (resumable), follow imports and retrieves from a PACS, export studies
de-identified (DICOM PS3.15), manage API keys.

Every `/v1` endpoint needs `Authorization: Bearer <API key>`, or the session cookie a
browser gets from `POST /v1/session` (sign in once with the key). Roles: `clinician` reads
studies; `ops` reads studies, manages imports, retrieves from a PACS and de-identified
exports; `admin` may do everything. Every call to `/v1` is written to the audit log."""


async def _session_key_digest(pool: asyncpg.Pool, token: str) -> str | None:
    async with pool.acquire() as conn:
        return await session_key_digest(conn, token)


def create_app(
    pool: asyncpg.Pool,
    publish: Publish,
    registry: CollectorRegistry,
    readiness: Readiness,
    *,
    limits: ApiLimits | None = None,
    previews: PreviewSource | None = None,
    viewer: ViewerFiles | None = None,
    dicomweb: DicomWebPorts | None = None,
    packager: httpx.AsyncClient | None = None,
    exports_dir: Path | None = None,
) -> FastAPI:
    """`packager`: a client of the packager's HTTP address; its archive routes are relayed.
    `exports_dir`: where the export round writes de-identified archives (served from there)."""
    limits = limits or ApiLimits()
    auth = Authenticator(pool, bad_request_paths=DICOMWEB_PATHS)
    app = FastAPI(
        title="dicomflow API",
        version="1",
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(RequestValidationError, auth.invalid_request)  # 401 before 422
    add_local_docs(app)
    app.include_router(studies_router(auth, limits))
    if packager is not None:
        app.include_router(archives_router(packager))
    if previews is not None:
        app.include_router(previews_router(pool, auth, previews))
    app.include_router(imports_router(pool, publish, auth, limits))
    app.include_router(retrieve_router(pool, auth))
    app.include_router(exports_router(pool, auth, exports_dir or Path("./var/exports")))
    app.include_router(apikeys_router(pool, auth))
    app.include_router(session_router(pool, auth, limits))
    if dicomweb is not None:
        app.include_router(dicomweb_router(pool, auth, dicomweb))
    app.include_router(instances_router(pool, auth))
    app.include_router(web_router(pool))  # the study browser at /
    app.include_router(ops_router("api", readiness, registry))
    if viewer is not None:
        app.include_router(viewer_router(auth, viewer))
    # Added last = outermost: metrics see every request, the audit sees the final status.
    app.add_middleware(AuditMiddleware, pool=pool)
    sessions = SessionKeys(partial(_session_key_digest, pool))  # both limits' session lookups
    for prefixes, per_key, per_address in (
        (("/v1",), limits.rate_per_key, limits.rate_per_address),
        (DICOMWEB_PATHS, limits.dicomweb_rate_per_key, limits.dicomweb_rate_per_address),
    ):
        app.add_middleware(  # before the audit: a flood is refused without a database write
            RateLimitMiddleware,
            per_key=per_key,
            per_address=per_address,
            prefixes=prefixes,
            sessions=sessions,
            cookie=SESSION_COOKIE,
        )
    app.add_middleware(MetricsMiddleware, metrics=ApiMetrics.create(registry))
    return app
