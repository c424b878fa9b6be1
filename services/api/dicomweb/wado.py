"""WADO-RS (PS3.18 §10.4): studies, series and instances as multipart/related
application/dicom, streamed from storage as stored; their metadata as DICOM JSON from the
index (permission `read`).

Transfer syntax (PS3.18 §8.7.3.5): the stored bytes are always sent unchanged; an Accept
asking for `transfer-syntax=*`, for none, or for the syntax every named instance is stored
in is satisfied, any other syntax is a 406 (no transcoding). Each part's Content-Type names
the instance's syntax.
"""

from collections.abc import AsyncIterator
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.routing import APIRouter

from libs.db.dicomweb import StoredInstance
from libs.http.auth import Authenticator, Caller
from libs.storage import ObjectStore
from services.api.dicomweb.common import (
    DICOM,
    DICOM_JSON,
    Uid,
    accepts,
    base_url,
    busy,
    negotiate_json,
    not_acceptable,
)
from services.api.dicomweb.multipart import Part, new_boundary, write_parts
from services.api.dicomweb.stored import find, instance_url, key_of, metadata_json
from services.api.previews import PreviewSource, RenderBusy

MULTIPART = "multipart/related"
CHUNK = 4 << 20  # fewer thread hops per object than 1 MiB; memory stays bounded


def dicom_syntax(request: Request, found: list[StoredInstance]) -> None:
    """Accept must allow multipart/related application/dicom in the stored syntax."""
    for r in accepts(request):
        if r.media_type == "*/*":
            return
        if r.media_type != MULTIPART or r.params.get("type", DICOM).lower() != DICOM:
            continue
        syntax = r.params.get("transfer-syntax", "*")
        if syntax == "*" or all(i.transfer_syntax_uid == syntax for i in found):
            return
    raise not_acceptable(
        f'{MULTIPART}; type="{DICOM}" in the stored transfer syntax (or transfer-syntax=*); '
        "this server does not transcode"
    )


def multipart_response(parts: AsyncIterator[Part], part_type: str) -> StreamingResponse:
    boundary = new_boundary()
    return StreamingResponse(
        write_parts(parts, boundary),
        media_type=f'{MULTIPART}; type="{part_type}"; boundary={boundary}',
    )


def wado_router(
    pool: asyncpg.Pool, auth: Authenticator, storage: ObjectStore, previews: PreviewSource
) -> APIRouter:
    router = APIRouter(tags=["DICOMweb"])
    retriever = Depends(auth.require("read", "dicomweb.retrieve"))
    reader = Depends(auth.require("read", "dicomweb.metadata"))

    async def instances(request: Request, found: list[StoredInstance]) -> StreamingResponse:
        dicom_syntax(request, found)
        base = base_url(request)

        async def parts() -> AsyncIterator[Part]:
            for i in found:  # one object open at a time, read in CHUNK pieces
                yield Part(
                    f'{DICOM}; transfer-syntax="{i.transfer_syntax_uid}"',
                    storage.read(key_of(i), CHUNK),
                    location=instance_url(base, i),
                )

        return multipart_response(parts(), DICOM)

    @router.get("/studies/{study}", summary="Retrieve a study")
    async def study(study: Uid, request: Request, caller: Annotated[Caller, retriever]) -> Response:
        return await instances(request, await find(pool, caller, study))

    @router.get("/studies/{study}/series/{series}", summary="Retrieve a series")
    async def series(
        study: Uid, series: Uid, request: Request, caller: Annotated[Caller, retriever]
    ) -> Response:
        return await instances(request, await find(pool, caller, study, series))

    @router.get("/studies/{study}/series/{series}/instances/{sop}", summary="Retrieve an instance")
    async def instance(
        study: Uid, series: Uid, sop: Uid, request: Request, caller: Annotated[Caller, retriever]
    ) -> Response:
        return await instances(request, await find(pool, caller, study, series, sop))

    async def metadata(
        request: Request, caller: Caller, study: str, series: str | None, sop: str | None
    ) -> Response:
        negotiate_json(request)
        found = await find(pool, caller, study, series, sop, with_json=True)
        try:  # instances indexed before headers were kept are read from their files
            body = await metadata_json(storage, found, base_url(request), previews.slot)
        except RenderBusy as exc:
            raise busy(exc) from None
        return Response(body, media_type=DICOM_JSON)

    @router.get("/studies/{study}/metadata", summary="A study's metadata")
    async def study_metadata(
        study: Uid, request: Request, caller: Annotated[Caller, reader]
    ) -> Response:
        return await metadata(request, caller, study, None, None)

    @router.get("/studies/{study}/series/{series}/metadata", summary="A series' metadata")
    async def series_metadata(
        study: Uid, series: Uid, request: Request, caller: Annotated[Caller, reader]
    ) -> Response:
        return await metadata(request, caller, study, series, None)

    @router.get(
        "/studies/{study}/series/{series}/instances/{sop}/metadata",
        summary="An instance's metadata",
    )
    async def instance_metadata(
        study: Uid, series: Uid, sop: Uid, request: Request, caller: Annotated[Caller, reader]
    ) -> Response:
        return await metadata(request, caller, study, series, sop)

    return router
