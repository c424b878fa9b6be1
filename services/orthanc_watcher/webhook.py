"""`POST /v1/ingest/orthanc`: Orthanc (its OnStableStudy Lua callback, deploy/orthanc/) names
a study, series or instance; the watcher answers 202 and takes it in in the background.

Authenticated by an API key with the `imports` permission (`Authorization: Bearer ...`) or,
when `ORTHANC_WEBHOOK_SECRET` is set, by that secret in `X-Dicomflow-Secret`. Every call is
written to the audit log, like the API's."""

from __future__ import annotations

import asyncio
import hmac
from typing import Literal

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPBearer
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field

from libs.http.auth import AUDIT_STATE, AuditContext, Authenticator
from libs.http.middleware import AuditMiddleware
from libs.runtime.probes import Readiness, ops_router
from services.orthanc_watcher.client import Level
from services.orthanc_watcher.rounds import ORTHANC_ID

ACTION = "orthanc.ingest"
SECRET_HEADER = "X-Dicomflow-Secret"  # noqa: S105 - a header name, not a secret


class OrthancResource(BaseModel):
    """What Orthanc's Lua callbacks know: the resource's Orthanc id and its level."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    id: str = Field(alias="ID", pattern=ORTHANC_ID.pattern, description="Orthanc resource id")
    path: Literal["Study", "Series", "Instance"] = Field(alias="Path")


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    id: str
    level: Level


Queue = asyncio.Queue[tuple[Level, str]]


def webhook_router(auth: Authenticator, queue: Queue, secret: str) -> APIRouter:
    router = APIRouter(tags=["ingest"])
    by_key = auth.require("imports", ACTION)
    bearer = HTTPBearer(auto_error=False)

    async def authorised(request: Request) -> None:
        given = request.headers.get(SECRET_HEADER)
        if secret and given is not None:
            setattr(request.state, AUDIT_STATE, AuditContext(ACTION))
            if hmac.compare_digest(given.encode(), secret.encode()):
                return
            raise HTTPException(status_code=401, detail=f"wrong {SECRET_HEADER}")
        await by_key(request, await bearer(request))

    @router.post(
        "/v1/ingest/orthanc",
        status_code=202,
        response_model=Accepted,
        dependencies=[Depends(authorised)],
    )
    async def ingest_orthanc(body: OrthancResource) -> Accepted:
        """Take in every instance of an Orthanc study, series or instance (asynchronously)."""
        try:
            queue.put_nowait((body.path, body.id))
        except asyncio.QueueFull:
            raise HTTPException(status_code=503, detail="busy: retry later") from None
        return Accepted(id=body.id, level=body.path)

    return router


def webhook_app(
    pool: asyncpg.Pool,
    queue: Queue,
    secret: str,
    registry: CollectorRegistry,
    readiness: Readiness,
) -> FastAPI:
    app = FastAPI(title="dicomflow orthanc-watcher", docs_url=None, redoc_url=None)
    app.include_router(webhook_router(Authenticator(pool), queue, secret))
    app.include_router(ops_router("orthanc-watcher", readiness, registry))
    app.add_middleware(AuditMiddleware, pool=pool)
    return app
