"""Study and series archives on the API's origin (permission `read`, checked by the packager).

The packager builds, caches and serves archives (services/packager/app.py); these routes relay
each request to it as it is (`libs/http/proxy.py`): the caller's key, Range, If-Range,
If-None-Match and If-Modified-Since go in, the packager's status and headers come back, the
body streams through. The packager authenticates the key and writes the audit row
(`archive.study` / `archive.series`, with the client's address from X-Forwarded-For), so a
download is audited once whichever port it came through.

GET and HEAD are separate operations (unique operation ids for generated clients).
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Header, Path, Query, Request, Security
from fastapi.responses import Response
from pydantic import BaseModel, Field

from libs.dicom.uids import UID_MAX_LENGTH, UID_RE
from libs.http.auth import _bearer
from libs.http.proxy import forward

Uid = Annotated[str, Path(pattern=UID_RE.pattern, max_length=UID_MAX_LENGTH)]
ArchiveFormat = Literal["tar.zst", "zip", "tar"]
MEDIA_TYPES: dict[str, str] = {
    "tar.zst": "application/zstd",
    "zip": "application/zip",
    "tar": "application/x-tar",
}
FormatParam = Annotated[
    ArchiveFormat,
    Query(
        alias="format",
        description="`tar.zst` (default: TAR compressed with zstd, readable names and "
        "manifest.json), `zip` or `tar` (uncompressed; both with a DICOMDIR and "
        "ISO 9660 names under `DICOM/`, and manifest.json)",
    ),
]
RangeHeader = Annotated[
    str | None,
    Header(
        alias="Range",
        description="One byte range, e.g. `bytes=1048576-` to resume; answered with 206",
    ),
]
IfRangeHeader = Annotated[
    str | None,
    Header(
        alias="If-Range",
        description="The ETag (or Last-Modified) the partial file came with: a changed "
        "archive is sent whole (200) instead of a range of the new one",
    ),
]
IfNoneMatchHeader = Annotated[
    str | None,
    Header(alias="If-None-Match", description="ETag(s) the client has: 304 when unchanged"),
]
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_STRING = {"schema": {"type": "string"}}
_HEADERS = {
    "ETag": {"description": "The archive's revision key (changes whenever its bytes do)"} | _STRING,
    "Last-Modified": {"description": "When the newest instance was indexed"} | _STRING,
    "Accept-Ranges": {"description": "`bytes`"} | _STRING,
    "Content-Disposition": {"description": "attachment; file name (RFC 6266)"} | _STRING,
    "Content-Length": {
        "description": "Absent when a tar/tar.zst is streamed while it is built",
        "schema": {"type": "integer"},
    },
}


class ErrorOut(BaseModel):
    """What every error answer carries."""

    detail: str = Field(description="What went wrong, in words")


def _responses(with_body: bool) -> dict[int | str, dict[str, Any]]:
    content = dict.fromkeys(MEDIA_TYPES.values(), _BINARY) if with_body else None

    def body(description: str, **extra: Any) -> dict[str, Any]:
        answer: dict[str, Any] = {"description": description, **extra}
        if content is not None:
            answer["content"] = content
        return answer

    def error(description: str) -> dict[str, Any]:
        if with_body:
            return {"description": description, "model": ErrorOut}
        return {"description": description}

    return {
        200: body("The whole archive", headers=_HEADERS),
        206: body(
            "The requested range (`Range`, and `If-Range` still matching)",
            headers={
                **_HEADERS,
                "Content-Range": {"description": "`bytes first-last/size`"} | _STRING,
            },
        ),
        304: {"description": "Not modified: `If-None-Match` names the current ETag"},
        401: error("Missing, invalid or revoked API key"),
        403: error("The key's role may not read studies"),
        404: error("No such study or series, or it has no instances"),
        416: {
            "description": "Range not satisfiable (`Content-Range: bytes */size`)",
            "headers": {"Content-Range": _STRING},
        },
        502: error("The stored instances differ from the index (the archive was not built)"),
        503: error("The archive service is unavailable"),
        504: error("The archive service did not answer in time"),
    }


def archives_router(packager: httpx.AsyncClient) -> APIRouter:
    router = APIRouter(prefix="/v1/studies", tags=["archives"])

    def endpoint(series: bool) -> Callable[..., Awaitable[Response]]:
        if series:

            async def series_archive(
                request: Request,
                study_uid: Uid,
                series_uid: Uid,
                _key: Annotated[object, Security(_bearer)],
                fmt: FormatParam = "tar.zst",
                _range: RangeHeader = None,
                _if_range: IfRangeHeader = None,
                _if_none_match: IfNoneMatchHeader = None,
            ) -> Response:
                path = f"/v1/studies/{study_uid}/series/{series_uid}/archive"
                return await forward(packager, request, path)

            return series_archive

        async def study_archive(
            request: Request,
            study_uid: Uid,
            _key: Annotated[object, Security(_bearer)],
            fmt: FormatParam = "tar.zst",
            _range: RangeHeader = None,
            _if_range: IfRangeHeader = None,
            _if_none_match: IfNoneMatchHeader = None,
        ) -> Response:
            return await forward(packager, request, f"/v1/studies/{study_uid}/archive")

        return study_archive

    what = {
        False: ("/{study_uid}/archive", "study", "The whole study"),
        True: ("/{study_uid}/series/{series_uid}/archive", "series", "One series of a study"),
    }
    for series, (path, name, summary) in what.items():
        router.add_api_route(
            path,
            endpoint(series),
            methods=["GET"],
            operation_id=f"download_{name}_archive",
            summary=f"{summary} as an archive",
            description=DOWNLOAD_DESCRIPTION,
            response_class=Response,
            responses=_responses(with_body=True),
        )
        router.add_api_route(
            path,
            endpoint(series),
            methods=["HEAD"],
            operation_id=f"inspect_{name}_archive",
            summary=f"Size, ETag and name of the {name} archive, without the body",
            response_class=Response,
            responses=_responses(with_body=False),
        )
    return router


DOWNLOAD_DESCRIPTION = """Resumable: send `Range: bytes=N-` with `If-Range: <ETag>` to go on
from byte N (206); a study that changed since has a new ETag and is sent whole (200).

`tar.zst`: `<Patient>_<Date>/<Series>/<Instance>.dcm` and `manifest.json`. `zip` and `tar`:
`<Patient>_<Date>/DICOMDIR` and `<Patient>_<Date>/DICOM/PT000000/ST000000/SE000000/IM000000`
... (ISO 9660 names, as on a CD a workstation imports) and `manifest.json`. The manifest
lists every file with its size and SHA-256, and each zstd frame carries a checksum: a
truncated or altered archive is detected before it is trusted.

Archives are built once per study revision and cached; the first request for a tar or
tar.zst not cached yet streams it while it is built (no Content-Length)."""
