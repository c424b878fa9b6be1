"""DICOMweb at `/dicom-web` (PS3.18): QIDO-RS search, WADO-RS and WADO-URI retrieval, STOW-RS
store, over the index and the object store, behind the API's keys and audit log. WADO-URI is
also served at the origin's `/wado`, where older viewers look for it."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from fastapi import APIRouter

from libs.http.auth import Authenticator
from libs.runtime.sandbox import IsolatedExecutor
from libs.storage import ObjectStore
from services.api.dicomweb.common import PREFIX, WADO_URI_ROOT
from services.api.dicomweb.pixels import pixels_router
from services.api.dicomweb.qido import qido_router
from services.api.dicomweb.stow import Publish, StowLimits, stow_router
from services.api.dicomweb.wado import wado_router
from services.api.dicomweb.wado_uri import wado_uri_router
from services.api.previews import PreviewSource

DICOMWEB_PATHS = (PREFIX, WADO_URI_ROOT)  # answered as PS3.18 says (400, not 422), rate limited


@dataclass(frozen=True)
class DicomWebPorts:
    """What DICOMweb needs besides the pool: stored bytes, the previews (rendered images),
    isolated workers for frames and for checking what STOW receives; STOW also needs the bus
    and its staging folder (without them, it is not served)."""

    storage: ObjectStore
    previews: PreviewSource
    executor: IsolatedExecutor
    max_results: int = 500
    publish: Publish | None = None
    stow: StowLimits | None = None


def dicomweb_router(pool: asyncpg.Pool, auth: Authenticator, ports: DicomWebPorts) -> APIRouter:
    """`/dicom-web/...`, and WADO-URI at both `/dicom-web/wado` and `/wado` (one router: the
    same guard, audit action and answers at either path)."""
    router = APIRouter(prefix=PREFIX)
    router.include_router(qido_router(pool, auth, ports.max_results))
    router.include_router(pixels_router(pool, auth, ports.storage, ports.previews, ports.executor))
    router.include_router(wado_router(pool, auth, ports.storage, ports.previews))
    wado_uri = wado_uri_router(pool, auth, ports.storage, ports.previews)
    router.include_router(wado_uri)
    if ports.publish is not None and ports.stow is not None:
        router.include_router(stow_router(pool, auth, ports.executor, ports.publish, ports.stow))
    root = APIRouter()
    root.include_router(router)
    root.include_router(wado_uri)  # `/wado` (issue 14; PS3.18 §9 leaves the path to us)
    return root


__all__ = ["DICOMWEB_PATHS", "DicomWebPorts", "StowLimits", "dicomweb_router"]
