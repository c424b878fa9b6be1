"""The images of one series (permission `read`): what a page needs to page through them."""

from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel

from libs.db.instance_list import series_instances
from libs.dicom.uids import UID_MAX_LENGTH, UID_RE
from libs.http.auth import Authenticator, Caller
from services.api.routes.previews import thumbnail_path

Uid = Annotated[str, Path(pattern=UID_RE.pattern, max_length=UID_MAX_LENGTH)]


class InstanceOut(BaseModel):
    sop_uid: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    frames: int | None
    size_bytes: int
    thumbnail_url: str | None
    preview_url: str | None


class InstanceList(BaseModel):
    study_uid: str
    series_uid: str
    items: list[InstanceOut]


def instances_router(pool: asyncpg.Pool, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/v1/studies", tags=["studies"])
    reader = Depends(auth.require("read", "series.instances"))

    @router.get(
        "/{study_uid}/series/{series_uid}/instances",
        response_model=InstanceList,
        operation_id="list_series_instances",
    )
    async def list_instances(
        study_uid: Uid, series_uid: Uid, caller: Annotated[Caller, reader]
    ) -> InstanceList:
        """The series' instances by instance number, with their preview and thumbnail links
        (null for an instance without pixels, such as a structured report)."""
        async with pool.acquire() as conn:
            found = await series_instances(conn, study_uid, series_uid)
        if found is None:
            caller.saw(0)
            raise HTTPException(status_code=404, detail="series not found in this study")
        caller.saw(len(found))
        items = []
        for row in found:
            thumb = thumbnail_path(study_uid, series_uid, row.sop_uid) if row.rows else None
            preview = thumb.removesuffix("thumbnail.jpg") + "preview.jpg" if thumb else None
            items.append(InstanceOut(**vars(row), thumbnail_url=thumb, preview_url=preview))
        return InstanceList(study_uid=study_uid, series_uid=series_uid, items=items)

    return router
