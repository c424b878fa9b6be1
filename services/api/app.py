"""The API application: routes, auth, audit and metrics around injected ports."""

from __future__ import annotations

import asyncpg
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from libs.http.auth import Authenticator
from libs.http.middleware import ApiMetrics, AuditMiddleware, MetricsMiddleware
from libs.ops import Readiness, ops_router
from services.api.config import ApiLimits
from services.api.dicomweb import DicomWebPorts, dicomweb_router
from services.api.previews import PreviewSource
from services.api.routes.apikeys import apikeys_router
from services.api.routes.imports import Publish, imports_router
from services.api.routes.previews import previews_router
from services.api.routes.retrieve import retrieve_router
from services.api.routes.session import session_router
from services.api.routes.studies import studies_router
from services.api.viewer import ViewerFiles, viewer_router

DESCRIPTION = """Search the DICOM index, view instance previews, follow imports and retrieves
from a PACS, manage API keys.

Every `/v1` endpoint needs `Authorization: Bearer <API key>`, or the session cookie a
browser gets from `POST /v1/session` (sign in once with the key). Roles: `clinician` reads
studies; `ops` reads studies, manages imports and retrieves from a PACS; `admin` may do
everything. Every call to `/v1` is written to the audit log."""


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
) -> FastAPI:
    limits = limits or ApiLimits()
    auth = Authenticator(pool)
    app = FastAPI(title="dicomflow API", version="1", description=DESCRIPTION)
    app.include_router(studies_router(pool, auth, limits))
    if previews is not None:
        app.include_router(previews_router(pool, auth, previews))
    app.include_router(imports_router(pool, publish, auth, limits))
    app.include_router(retrieve_router(pool, auth))
    app.include_router(apikeys_router(pool, auth))
    app.include_router(session_router(pool, auth, limits))
    if dicomweb is not None:
        app.include_router(dicomweb_router(pool, auth, dicomweb))
    app.include_router(ops_router("api", readiness, registry))
    if viewer is not None:
        app.include_router(viewer_router(auth, viewer))
    # Added last = outermost: metrics see every request, the audit sees the final status.
    app.add_middleware(AuditMiddleware, pool=pool)
    app.add_middleware(MetricsMiddleware, metrics=ApiMetrics.create(registry))
    return app
