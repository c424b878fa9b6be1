"""Archive downloads over HTTP, with what a download manager expects: ETag (the revision key)
and Last-Modified, Accept-Ranges, one Range -> 206 + Content-Range, If-Range, 416, HEAD,
If-None-Match / If-Modified-Since -> 304 (answered from the plan, without building).

A cached archive is sent from disk (Starlette's FileResponse does the Range logic). A
tar.zst or tar requested while it is not cached is streamed (chunked) as it is built; a
Range, a HEAD or a ZIP waits for the build, since they need the finished file.

Clients reach these routes through the API's origin (services/api/routes/archives.py relays
them); the API's OpenAPI document describes them, so this app publishes none of its own.

No `from __future__ import annotations` here: FastAPI must see the route dependencies, which
are local variables, when it reads the signatures.
"""

import unicodedata
from email.utils import parsedate_to_datetime
from typing import Annotated, Literal
from urllib.parse import quote

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter

from libs.dicom.uids import UID_MAX_LENGTH, UID_RE
from libs.http.auth import Authenticator, Caller
from libs.http.middleware import ApiMetrics, AuditMiddleware, MetricsMiddleware
from libs.runtime.metrics import metric_prefix
from libs.runtime.probes import Readiness, ops_router
from services.packager.layout import Format, Plan, safe_component
from services.packager.packager import ArchiveError, Packager

MEDIA_TYPES: dict[str, str] = {
    "tar.zst": "application/zstd",
    "zip": "application/zip",
    "tar": "application/x-tar",
}
STREAMABLE = frozenset({"tar.zst", "tar"})
Uid = Annotated[str, Path(pattern=UID_RE.pattern, max_length=UID_MAX_LENGTH)]
FormatParam = Annotated[
    Literal["tar.zst", "zip", "tar"],
    Query(alias="format", description="tar.zst (default), zip or tar"),
]


class ArchiveFile(FileResponse):
    chunk_size = 1 << 20  # Starlette's 64 KiB costs a thread hop per 64 KiB


def content_disposition(stem: str, ext: str) -> str:
    """An ASCII fallback for old clients and the UTF-8 name (RFC 6266 / 5987), both made
    safe (`ext` is ours: "tar.zst", "zip" or "tar")."""
    stem = safe_component(stem, "archive")
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    fallback = f"{safe_component(ascii_stem, 'archive')}.{ext}"
    utf8 = quote(f"{stem}.{ext}", safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{utf8}"


def archive_headers(plan: Plan) -> dict[str, str]:
    return {
        "etag": f'"{plan.key}"',
        "last-modified": plan.last_modified.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "accept-ranges": "bytes",
        "content-disposition": content_disposition(plan.root, plan.format),
        "cache-control": "private, no-transform",
    }


def not_modified(request: Request, plan: Plan) -> bool:
    """RFC 9110 13.1.2-13.1.3: If-None-Match (weak comparison) wins; else If-Modified-Since."""
    if (inm := request.headers.get("if-none-match")) is not None:
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        return "*" in tags or f'"{plan.key}"' in tags
    if (ims := request.headers.get("if-modified-since")) is not None:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            return False
        return plan.last_modified.replace(microsecond=0) <= since
    return False


def archive_router(packager: Packager, auth: Authenticator, downloads: Counter) -> APIRouter:
    router = APIRouter(prefix="/v1/studies", tags=["archives"])
    study_reader = Depends(auth.require("read", "archive.study"))
    series_reader = Depends(auth.require("read", "archive.series"))

    async def respond(
        request: Request, caller: Caller, study: str, series: str | None, fmt: Format
    ) -> Response:
        plan = await packager.plan(study, series, fmt)
        if plan is None:
            caller.saw(0)
            raise HTTPException(status_code=404, detail="no such study or series (or no instances)")
        caller.saw(len(plan.members))
        headers, media = archive_headers(plan), MEDIA_TYPES[fmt]
        if not_modified(request, plan):
            downloads.labels(fmt, "not_modified").inc()
            return Response(status_code=304, headers=headers)
        path = packager.cache.lookup(plan)
        if path is None:
            streamable = (
                fmt in STREAMABLE and request.method == "GET" and "range" not in request.headers
            )
            if streamable:
                downloads.labels(fmt, "streamed").inc()
                follower = packager.follower(packager.start(plan))
                return StreamingResponse(follower, headers=headers, media_type=media)
            try:
                path = await packager.ensure(plan)
            except ArchiveError as exc:
                raise HTTPException(status_code=502, detail=str(exc)) from exc
        downloads.labels(fmt, "cached").inc()
        return ArchiveFile(path, headers=headers, media_type=media)

    @router.api_route("/{study_uid}/archive", methods=["GET", "HEAD"])
    async def study_archive(
        request: Request,
        study_uid: Uid,
        caller: Annotated[Caller, study_reader],
        fmt: FormatParam = "tar.zst",
    ) -> Response:
        """The whole study: `<Patient>_<Date>/<Series>/<Instance>.dcm` plus manifest.json
        (tar.zst), or DICOMDIR + `DICOM/...` plus manifest.json (zip, tar)."""
        return await respond(request, caller, study_uid, None, fmt)

    @router.api_route("/{study_uid}/series/{series_uid}/archive", methods=["GET", "HEAD"])
    async def series_archive(
        request: Request,
        study_uid: Uid,
        series_uid: Uid,
        caller: Annotated[Caller, series_reader],
        fmt: FormatParam = "tar.zst",
    ) -> Response:
        """One series of a study, same layout."""
        return await respond(request, caller, study_uid, series_uid, fmt)

    return router


def create_app(
    pool: asyncpg.Pool, packager: Packager, registry: CollectorRegistry, readiness: Readiness
) -> FastAPI:
    downloads = Counter(
        f"{metric_prefix('packager')}_downloads_total",
        "Archive responses, by format and whether they came from the cache or a running build.",
        ["format", "source"],
        registry=registry,
    )
    app = FastAPI(
        title="dicomflow packager", version="1", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.include_router(archive_router(packager, Authenticator(pool), downloads))
    app.include_router(ops_router("packager", readiness, registry))
    app.add_middleware(AuditMiddleware, pool=pool)
    app.add_middleware(MetricsMiddleware, metrics=ApiMetrics.create(registry, "packager"))
    return app
