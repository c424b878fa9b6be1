"""What every DICOMweb route shares: media types, UIDs in paths, the service's base URL."""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Request
from pydantic import AfterValidator

from libs.dicom.uids import UID_MAX_LENGTH, UID_RE
from services.api.dicomweb.multipart import MediaRange, parse_accept

PREFIX = "/dicom-web"
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


def base_url(request: Request) -> str:
    """The DICOMweb service's URL as the caller reached it (RetrieveURL, BulkDataURI)."""
    return str(request.base_url).rstrip("/") + PREFIX


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
