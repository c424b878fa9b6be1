"""DICOMweb at `/dicom-web` (PS3.18): QIDO-RS search, WADO-RS and WADO-URI retrieval, STOW-RS
store, over the index and the object store, behind the API's keys and audit log."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncpg
from fastapi import APIRouter

from libs.http.auth import Authenticator
from libs.imaging.isolated import Renderer
from libs.storage import ObjectStore
from services.api.dicomweb.common import PREFIX
from services.api.dicomweb.qido import qido_router


@dataclass(frozen=True)
class DicomWebPorts:
    """What DICOMweb needs besides the pool: stored bytes, the renderer, and for STOW a
    staging folder and the bus."""

    storage: ObjectStore
    renderer: Renderer
    max_results: int = 500


def dicomweb_router(pool: asyncpg.Pool, auth: Authenticator, ports: DicomWebPorts) -> APIRouter:
    router = APIRouter(prefix=PREFIX)
    router.include_router(qido_router(pool, auth, ports.max_results))
    return router


__all__ = ["DicomWebPorts", "Path", "dicomweb_router"]
