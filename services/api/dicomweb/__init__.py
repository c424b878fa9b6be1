"""DICOMweb at `/dicom-web` (PS3.18): QIDO-RS search, WADO-RS and WADO-URI retrieval, STOW-RS
store, over the index and the object store, behind the API's keys and audit log."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from fastapi import APIRouter

from libs.dicom.isolation import IsolatedExecutor
from libs.http.auth import Authenticator
from libs.storage import ObjectStore
from services.api.dicomweb.common import PREFIX
from services.api.dicomweb.pixels import pixels_router
from services.api.dicomweb.qido import qido_router
from services.api.dicomweb.stow import Publish, StowLimits, stow_router
from services.api.dicomweb.wado import wado_router
from services.api.dicomweb.wado_uri import wado_uri_router
from services.api.previews import PreviewSource


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
    router = APIRouter(prefix=PREFIX)
    router.include_router(qido_router(pool, auth, ports.max_results))
    router.include_router(pixels_router(pool, auth, ports.storage, ports.previews, ports.executor))
    router.include_router(wado_router(pool, auth, ports.storage))
    router.include_router(wado_uri_router(pool, auth, ports.storage, ports.previews))
    if ports.publish is not None and ports.stow is not None:
        router.include_router(stow_router(pool, auth, ports.executor, ports.publish, ports.stow))
    return router


__all__ = ["DicomWebPorts", "StowLimits", "dicomweb_router"]
