"""What every DICOMweb route shares: media types, UIDs in paths, the service's base URL."""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Request
from pydantic import AfterValidator

from libs.dicom.uids import UID_MAX_LENGTH, UID_RE
from services.api.dicomweb.multipart import MediaRange, parse_accept
from services.api.previews import RETRY_AFTER_SECONDS

PREFIX = "/dicom-web"
WADO_URI_ROOT = "/wado"  # WADO-URI at the origin's root too (older viewers look for it there)
DICOM_JSON = "application/dicom+json"
DICOM = "application/dicom"
OCTETS = "application/octet-stream"
JPEG = "image/jpeg"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def check_uid(value: str) -> str:
    """A malformed UID in a path is a 400 with the reason (PS3.18), not FastAPI's 422."""
    if len(value) > UID_MAX_LENGTH or not UID_RE.fullmatch(value):
        raise HTTPException(status_code=400, detail=f"{value[:80]!r} is not a valid UID")
    return value


Uid = Annotated[str, AfterValidator(check_uid)]


_FORWARDED = ("forwarded", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-for")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def base_url(request: Request) -> str:
    """The DICOMweb service's URL as the caller reached it (RetrieveURL, BulkDataURI).

    Some clients (dicomweb-client 0.61) send a Host header without the port they connected
    to; without a proxy in between, the port the request arrived on is put back, so the
    URLs in the answer lead back here."""
    url = request.base_url
    server = request.scope.get("server")
    if (
        url.port is None
        and server is not None
        and server[1] != _DEFAULT_PORTS.get(url.scheme)
        and not any(h in request.headers for h in _FORWARDED)
    ):
        url = url.replace(port=server[1])
    return str(url).rstrip("/") + PREFIX


def busy(reason: object) -> HTTPException:
    """Every render slot taken and the queue full (`RenderBusy`): 503 with Retry-After."""
    return HTTPException(
        status_code=503,
        detail=f"images are busy ({reason}): try again shortly",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def not_acceptable(offered: str) -> HTTPException:
    return HTTPException(status_code=406, detail=f"this resource is available as {offered}")


def accepts(request: Request) -> list[MediaRange]:
    return parse_accept(request.headers.get("accept"))


def negotiate_json(request: Request) -> None:
    """QIDO and metadata answers are DICOM JSON (application/json accepted too)."""
    for r in accepts(request):
        if r.matches(DICOM_JSON) or r.matches("application/json"):
            return
    raise not_acceptable(DICOM_JSON)
