"""Instance previews and thumbnails as JPEG (permission `read`), with an optional window."""

from collections.abc import Awaitable, Callable
from typing import Annotated, Self

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from libs.dicom.uids import UID_MAX_LENGTH, UID_RE
from libs.http.auth import Authenticator, Caller
from libs.imaging.jobs import Kind
from libs.imaging.window import PRESETS, PresetName, Window, preset
from services.api.previews import (
    RETRY_AFTER_SECONDS,
    InstanceRef,
    PreviewSource,
    PreviewUnavailable,
    RenderBusy,
)

Uid = Annotated[str, Path(pattern=UID_RE.pattern, max_length=UID_MAX_LENGTH)]
CACHE = "private, max-age=3600"
SUMMARIES: dict[Kind, str] = {
    "preview": "Full-size JPEG of one frame",
    "thumbnail": "JPEG of one frame, at most 256 pixels on its longest side",
}


class WindowQuery(BaseModel):
    """Default: the converter's image (the file's own window). `wc`+`ww` or `preset` render
    on the fly; unknown parameters are rejected."""

    model_config = ConfigDict(extra="forbid")

    wc: float | None = Field(default=None, ge=-1e6, le=1e6, description="Window center")
    ww: float | None = Field(default=None, ge=1, le=1e6, description="Window width (>= 1)")
    preset: PresetName | None = Field(default=None, description=f"One of {', '.join(PRESETS)}")
    frame: int = Field(default=0, ge=0, le=100_000, description="Frame index, 0 = first")

    @model_validator(mode="after")
    def _one_window(self) -> Self:
        if (self.wc is None) != (self.ww is None):
            raise ValueError("wc and ww go together")
        if self.preset is not None and self.wc is not None:
            raise ValueError("give either preset or wc and ww, not both")
        return self

    def window(self) -> Window | None:
        if self.preset is not None:
            return preset(self.preset)
        if self.wc is not None and self.ww is not None:
            return Window(self.wc, self.ww)
        return None


def previews_router(pool: asyncpg.Pool, auth: Authenticator, source: PreviewSource) -> APIRouter:
    router = APIRouter(
        prefix="/v1/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
        tags=["previews"],
    )

    async def serve(ref: InstanceRef, kind: Kind, query: WindowQuery, caller: Caller) -> Response:
        async with pool.acquire() as conn:
            found = await conn.fetchval(
                """SELECT true FROM instances
                    WHERE sop_instance_uid = $1 AND series_uid = $2 AND study_uid = $3""",
                ref.sop_uid,
                ref.series_uid,
                ref.study_uid,
            )
        if not found:
            caller.saw(0)
            raise HTTPException(status_code=404, detail="instance not found")
        caller.saw(1)
        try:
            jpeg = await source.jpeg(ref, kind, query.frame, query.window())
        except PreviewUnavailable as exc:
            raise HTTPException(status_code=422, detail=f"no image: {exc}") from None
        except RenderBusy as exc:
            raise HTTPException(
                status_code=503,
                detail=f"previews are busy ({exc}): try again shortly",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        headers = {"Cache-Control": CACHE}
        if jpeg.stream is not None:
            return StreamingResponse(jpeg.stream, media_type="image/jpeg", headers=headers)
        return Response(jpeg.data, media_type="image/jpeg", headers=headers)

    def endpoint(kind: Kind) -> Callable[..., Awaitable[Response]]:
        guard = Depends(auth.require("read", f"instance.{kind}"))

        async def jpeg(
            study_uid: Uid,
            series_uid: Uid,
            sop_uid: Uid,
            query: Annotated[WindowQuery, Query()],
            caller: Annotated[Caller, guard],
        ) -> Response:
            return await serve(InstanceRef(study_uid, series_uid, sop_uid), kind, query, caller)

        return jpeg

    for kind, summary in SUMMARIES.items():
        router.add_api_route(
            f"/{kind}.jpg",
            endpoint(kind),
            methods=["GET"],
            response_class=Response,
            name=f"instance_{kind}",
            summary=summary,
            responses={200: {"content": {"image/jpeg": {}}}},
        )
    return router


def thumbnail_path(study_uid: str, series_uid: str | None, sop_uid: str | None) -> str | None:
    if series_uid is None or sop_uid is None:
        return None
    return f"/v1/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/thumbnail.jpg"
