"""The OHIF Viewer at /viewer: OHIF's prebuilt static files (installed by
deploy/dev/ohif.sh, see ADR 0018) served by the API, with our own app-config.js pointing
OHIF's DICOMweb data source at /dicom-web on this same origin.

A browser that is not signed in is sent to the sign-in page for the viewer's pages; the
static files themselves (OHIF's code, no patient data) are served to anyone. Every request
OHIF makes to /dicom-web carries the session cookie (same origin), so the clinician's key and
role apply there as on /v1.

Security headers: a Content-Security-Policy that lets only this origin serve scripts (the two
small inline scripts of OHIF's index.html by their hashes; WebAssembly compilation for the
image codecs), connect, and load images, fonts and workers; COOP/COEP so the page is
cross-origin isolated (OHIF then shares decoded volumes with its workers through a
SharedArrayBuffer). Hashed file names are cached for a year, everything else revalidated.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from libs.http.auth import AUDIT_STATE, AuditContext, Authenticator, allowed

PREFIX = "/viewer"
PUBLIC_URL = PREFIX + "/"
SIGN_IN = "/signin"
DICOMWEB_ROOT = "/dicom-web"
INSTALL_STAMP = ".dicomflow-installed"
INSTALL_HINT = "install it with `bash deploy/dev/ohif.sh` (or `make deps`)"

# OHIF's build names its chunks, workers, wasm and fonts with a 16-hex-digit content hash.
_HASHED = re.compile(r"(^|[./])[0-9a-f]{16}\.(js|wasm|woff2|css)$")
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL)
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".jsonc": "application/json",
    ".woff2": "font/woff2",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
ISOLATION = {
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-embedder-policy": "require-corp",
    "cross-origin-resource-policy": "same-origin",
    "x-content-type-options": "nosniff",
}


class ViewerNotInstalled(RuntimeError):
    pass


def content_security_policy(inline_script_hashes: list[str]) -> str:
    """What OHIF needs and nothing from elsewhere: scripts, data, fonts and workers from this
    origin; blob:/data: for the images and workers OHIF makes itself; inline styles (React's
    style attributes); WebAssembly compilation for the codecs (not eval)."""
    scripts = " ".join(f"'sha256-{h}'" for h in inline_script_hashes)
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' {scripts} 'wasm-unsafe-eval'",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data: blob:",
            "font-src 'self' data:",
            "connect-src 'self' data: blob:",
            "worker-src 'self' blob:",
            "media-src 'self' blob:",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def app_config_js() -> bytes:
    """OHIF's window.config: one DICOMweb data source, /dicom-web on the page's own origin
    (so the session cookie goes with every request), what our server supports, and a
    401 (session ended) sends the browser back to the sign-in page."""
    root = DICOMWEB_ROOT
    source = {
        "friendlyName": "dicomflow",
        "name": "dicomflow",
        "qidoRoot": root,
        "wadoRoot": root,
        "wadoUriRoot": root + "/wado",
        "qidoSupportsIncludeField": True,
        "supportsReject": False,
        "dicomUploadEnabled": False,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": True,
        "supportsWildcard": True,
        "staticWado": False,
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        "omitQuotationForMultipartRequest": True,
    }
    config = {
        "name": "dicomflow",
        "routerBasename": PREFIX,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": True,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "showErrorDetails": "dev",
        "defaultDataSourceName": "dicomflow",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "dicomflow",
                "configuration": source,
            }
        ],
    }
    body = json.dumps(config, indent=2, ensure_ascii=False)
    return f"""// Generated by dicomflow (services/api/viewer.py); OHIF's own config is not served.
(function () {{
  var config = {body};
  var origin = window.location.origin;
  var source = config.dataSources[0].configuration;
  ["qidoRoot", "wadoRoot", "wadoUriRoot"].forEach(function (k) {{
    source[k] = origin + source[k];
  }});
  config.httpErrorHandler = function (error) {{
    if (error && error.status === 401) {{
      var here = window.location.pathname + window.location.search;
      window.location.assign({json.dumps(SIGN_IN)} + "?next=" + encodeURIComponent(here));
    }}
  }};
  window.config = config;
}})();
""".encode()


@dataclass(frozen=True)
class ViewerFiles:
    dist: Path
    index_html: bytes
    csp: str
    config_js: bytes

    @classmethod
    def load(cls, dist: Path) -> ViewerFiles:
        """Read the installed build once at start; a missing or foreign build fails here."""
        stamp = dist / INSTALL_STAMP
        try:
            installed = stamp.read_text()
            index = (dist / "index.html").read_bytes()
        except OSError as exc:
            raise ViewerNotInstalled(f"no OHIF Viewer in {dist}: {INSTALL_HINT}") from exc
        if not installed.endswith(" " + PUBLIC_URL):
            raise ViewerNotInstalled(f"{dist} was not prepared for {PUBLIC_URL}: {INSTALL_HINT}")
        hashes = [
            base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode()
            for m in _INLINE_SCRIPT.finditer(index)
        ]
        return cls(dist, index, content_security_policy(hashes), app_config_js())


def _page_headers(files: ViewerFiles) -> dict[str, str]:
    return {**ISOLATION, "content-security-policy": files.csp, "cache-control": "no-store"}


def viewer_router(auth: Authenticator, files: ViewerFiles) -> APIRouter:
    router = APIRouter(tags=["viewer"], include_in_schema=False)
    static = StaticFiles(directory=files.dist)

    async def page(request: Request) -> Response:
        """OHIF's index.html for any of its routes, to a signed-in browser; else the
        sign-in page, which brings the browser back here."""
        key = await auth.identify(request, None)
        if key is None or not allowed(key.role, "read"):
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            target = f"{SIGN_IN}?next={quote(here, safe='/')}"
            return RedirectResponse(target, status_code=302, headers={"cache-control": "no-store"})
        setattr(request.state, AUDIT_STATE, AuditContext("viewer.open", key=key))
        return Response(files.index_html, media_type="text/html", headers=_page_headers(files))

    @router.api_route(PREFIX, methods=["GET", "HEAD"], operation_id="viewer")
    async def viewer_root(request: Request) -> Response:
        return await page(request)

    @router.api_route(
        PREFIX + "/app-config.js", methods=["GET", "HEAD"], operation_id="viewer_config"
    )
    async def viewer_config() -> Response:
        return Response(
            files.config_js,
            media_type="text/javascript",
            headers={**ISOLATION, "cache-control": REVALIDATE},
        )

    @router.api_route(PREFIX + "/{path:path}", methods=["GET", "HEAD"], operation_id="viewer_file")
    async def viewer_file(path: str, request: Request) -> Response:
        """A file of the build, else (a path without an extension) one of OHIF's routes."""
        clean = os.path.normpath(path) if path else "."
        name = clean.rsplit("/", 1)[-1]
        if clean in {".", "index.html"}:
            return await page(request)
        if clean.startswith("..") or any(p.startswith(".") for p in clean.split("/")):
            raise HTTPException(status_code=404)
        try:
            response = await static.get_response(clean, request.scope)
        except StarletteHTTPException as exc:  # StaticFiles raises Starlette's, not FastAPI's
            if exc.status_code == 404 and "." not in name:
                return await page(request)
            raise
        suffix = os.path.splitext(name)[1].lower()
        if suffix in _MEDIA_TYPES and "content-type" in response.headers:
            response.headers["content-type"] = _MEDIA_TYPES[suffix]
        response.headers.update(ISOLATION)
        response.headers["cache-control"] = IMMUTABLE if _HASHED.search(name) else REVALIDATE
        if suffix == ".html":
            response.headers["content-security-policy"] = files.csp
        return response

    return router
