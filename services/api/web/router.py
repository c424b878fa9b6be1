"""Serves the study browser (and an import's live progress page): four HTML shells and
their assets, all from this package.

Why a static app on the JSON API rather than server-rendered pages: the pages need
JavaScript anyway (downloads with progress through `fetch` streams, windowed previews,
session expiry), and the API already validates and audits every search; rendering the same
data twice would mean two code paths to keep in step. No build step: the files in
`static/` are what the browser runs, so nothing is fetched at build or run time and the
pages work on a hospital network without internet.

The server does the little that must not wait for JavaScript: a page asked for without a
live session redirects to `/signin?next=<that page>` (so no page ever flashes or fires a
request that fails), the sign-in page gets its `next` already reduced to a local path (no
open redirect), and each page learns whether a viewer is mounted at `/viewer` and the
window presets from `libs.imaging.window` through `data-` attributes (the Content-Security-
Policy allows no inline script).
"""

from __future__ import annotations

import hashlib
import html
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlsplit

import asyncpg
from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, Response

from libs.db import sessions
from libs.db.apikeys import ApiKey
from libs.dicom.uids import UID_MAX_LENGTH, UID_RE
from libs.http.auth import SESSION_COOKIE
from libs.imaging.window import PRESETS

HERE = Path(__file__).parent
VIEWER_PATH = "/viewer"
VIEWER_STUDY_URL = "/viewer/viewer"  # + ?StudyInstanceUIDs=<uid>
MAX_NEXT = 2000
# What a clinician picks from; "soft tissue" is the usual L 40 / W 400 (HU), the abdomen preset.
PRESET_LABELS = {"lung": "Lung", "bone": "Bone", "brain": "Brain", "soft": "Soft tissue"}
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}
MEDIA = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets(folder: Path) -> dict[str, Asset]:
    """Every file of `static/`, read once when the app is built."""
    assets = {}
    for path in sorted(folder.iterdir()):
        if path.suffix in MEDIA:
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            assets[path.name] = Asset(body, MEDIA[path.suffix] + "; charset=utf-8", etag)
    return assets


def local_path(target: str | None) -> str:
    """`target` when it is a path on this site (`/...`), else `/`: never another host
    (`//evil`, `/\\evil`, `https://evil`), never a control character."""
    if not target or len(target) > MAX_NEXT or not target.startswith("/"):
        return "/"
    if target.startswith(("//", "/\\")) or any(c < " " or c in "\\\x7f" for c in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def presets() -> dict[str, dict[str, object]]:
    windows = {**{k: PRESETS[k] for k in ("lung", "bone", "brain")}, "soft": PRESETS["abdomen"]}
    return {
        key: {"label": PRESET_LABELS[key], "wc": w.center, "ww": w.width}
        for key, w in windows.items()
    }


def has_viewer(request: Request) -> bool:
    """Whether something (the OHIF viewer) is mounted at `/viewer` in this app."""
    for route in request.app.routes:
        path = str(getattr(route, "path", "")).rstrip("/")
        if path == VIEWER_PATH or path.startswith(VIEWER_PATH + "/"):
            return True
    return False


def web_router(pool: asyncpg.Pool) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    assets = load_assets(HERE / "static")
    pages = {p.stem: p.read_text(encoding="utf-8") for p in (HERE / "pages").glob("*.html")}

    async def signed_in(request: Request) -> tuple[ApiKey, datetime] | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        async with pool.acquire() as conn:
            return await sessions.session_key(conn, token)

    def page(name: str, fields: dict[str, str]) -> Response:
        text = pages[name]
        for field, value in fields.items():
            text = text.replace("{{" + field + "}}", html.escape(value, quote=True))
        headers = {**SECURITY_HEADERS, "cache-control": "no-store"}
        return Response(text, media_type="text/html; charset=utf-8", headers=headers)

    async def app_page(request: Request, name: str) -> Response:
        found = await signed_in(request)
        if found is None:
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/signin?next={quote(here, safe='')}", status_code=303)
        key, expires = found
        return page(
            name,
            {
                "user": key.name or key.key_prefix,
                "role": key.role,
                "expires": expires.isoformat(),
                "viewer": VIEWER_STUDY_URL if has_viewer(request) else "",
                "presets": json.dumps(presets()),
            },
        )

    @router.get("/")
    async def search_page(request: Request) -> Response:
        return await app_page(request, "search")

    @router.get("/studies/{study_uid}")
    async def study_page(
        request: Request,
        study_uid: Annotated[str, PathParam(pattern=UID_RE.pattern, max_length=UID_MAX_LENGTH)],
    ) -> Response:
        return await app_page(request, "study")

    @router.get("/imports/{task_id}")
    async def import_page(request: Request, task_id: uuid.UUID) -> Response:
        return await app_page(request, "import")

    @router.get("/signin")
    async def signin_page(request: Request, next: str | None = None) -> Response:
        return page("signin", {"next": local_path(next)})

    @router.get("/static/{name}")
    async def asset(request: Request, name: str) -> Response:
        found = assets.get(name)
        if found is None:
            raise HTTPException(status_code=404, detail="no such file")
        headers = {**SECURITY_HEADERS, "etag": found.etag, "cache-control": "no-cache"}
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)

    return router
