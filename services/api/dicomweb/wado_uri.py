"""WADO-URI (PS3.18 §9): `/wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…` (the
same at `/dicom-web/wado`) for older viewers (permission `read`).
`contentType=application/dicom` gives the stored file as is; `image/jpeg` (the default) a
rendered frame (`frameNumber`, `windowCenter` and `windowWidth`)."""

from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response, StreamingResponse

from libs.http.auth import Authenticator, Caller
from libs.imaging.window import Window
from libs.storage import ObjectStore
from services.api.dicomweb.common import DICOM, JPEG, busy, check_uid
from services.api.dicomweb.stored import find, key_of
from services.api.previews import InstanceRef, PreviewSource, PreviewUnavailable, RenderBusy


def _window(center: float | None, width: float | None) -> Window | None:
    if center is None and width is None:
        return None
    if center is None or width is None:
        raise HTTPException(status_code=400, detail="windowCenter and windowWidth go together")
    try:
        return Window(center, width)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None


def wado_uri_router(
    pool: asyncpg.Pool, auth: Authenticator, storage: ObjectStore, previews: PreviewSource
) -> APIRouter:
    router = APIRouter(tags=["DICOMweb"])
    guard = Depends(auth.require("read", "dicomweb.wado-uri"))

    @router.get("/wado", summary="WADO-URI: one instance as DICOM or JPEG")
    async def wado(
        caller: Annotated[Caller, guard],
        request_type: Annotated[str, Query(alias="requestType")],
        study_uid: Annotated[str, Query(alias="studyUID")],
        series_uid: Annotated[str, Query(alias="seriesUID")],
        object_uid: Annotated[str, Query(alias="objectUID")],
        content_type: Annotated[str, Query(alias="contentType")] = JPEG,
        frame_number: Annotated[int, Query(alias="frameNumber", ge=1)] = 1,
        window_center: Annotated[float | None, Query(alias="windowCenter")] = None,
        window_width: Annotated[float | None, Query(alias="windowWidth")] = None,
    ) -> Response:
        if request_type != "WADO":
            raise HTTPException(status_code=400, detail="requestType must be WADO")
        for uid in (study_uid, series_uid, object_uid):
            check_uid(uid)
        wanted = [t.split(";")[0].strip().lower() for t in content_type.split(",")]
        [i] = await find(pool, caller, study_uid, series_uid, object_uid)
        if DICOM in wanted:
            return StreamingResponse(storage.read(key_of(i)), media_type=DICOM)
        if JPEG not in wanted and "image/*" not in wanted and "*/*" not in wanted:
            raise HTTPException(status_code=406, detail=f"contentType {DICOM} or {JPEG}")
        window = _window(window_center, window_width)
        ref = InstanceRef(study_uid, series_uid, object_uid)
        try:
            image = await previews.jpeg(ref, "preview", frame_number - 1, window)
        except PreviewUnavailable as exc:
            raise HTTPException(status_code=406, detail=f"no image: {exc}") from None
        except RenderBusy as exc:
            raise busy(exc) from None
        if image.stream is not None:
            return StreamingResponse(image.stream, media_type=JPEG)
        return Response(image.data, media_type=JPEG)

    return router
