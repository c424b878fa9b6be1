"""Study search and study detail (permission `read`)."""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from libs.db import search
from libs.dicom.uids import UID_MAX_LENGTH, UID_RE
from libs.http.auth import Authenticator, Caller
from services.api.config import ApiLimits
from services.api.routes import page_limit
from services.api.routes.previews import thumbnail_path
from services.api.schemas import StudyDetailOut, StudyPage, StudyQuery

StudyUid = Annotated[
    str, Path(pattern=UID_RE.pattern, max_length=UID_MAX_LENGTH, description="StudyInstanceUID")
]


def studies_router(auth: Authenticator, limits: ApiLimits) -> APIRouter:
    """The routes take their connection from the guard (`Caller.connection()`)."""
    router = APIRouter(prefix="/v1/studies", tags=["studies"])
    # One connection a request: the key lookup, the queries and the audit row.
    searcher = Depends(auth.require("read", "study.search", one_connection=True))
    reader = Depends(auth.require("read", "study.read", one_connection=True))

    @router.get("", response_model=StudyPage)
    async def search_studies(
        query: Annotated[StudyQuery, Query()], caller: Annotated[Caller, searcher]
    ) -> StudyPage:
        """Studies matching every filter given, newest first."""
        limit = page_limit(query.limit, limits)
        criteria = search.StudyFilter(**query.model_dump(exclude={"limit", "offset"}))
        found = await search.search_studies(
            await caller.connection(),
            criteria,
            limit=limit,
            offset=query.offset,
            count_limit=limits.search_count_limit,
        )
        rows = found.rows
        caller.saw(len(rows))
        # Shallow dicts: dataclasses.asdict deep-copies every value and was half the
        # request's CPU for a page of 50 studies.
        items = [
            {
                **vars(r),
                "patient": vars(r.patient),
                "thumbnail_url": thumbnail_path(
                    r.study_uid, r.thumbnail_series_uid, r.thumbnail_sop_uid
                ),
            }
            for r in rows
        ]
        return StudyPage.model_validate(
            {
                "total": found.total,
                "total_exact": found.exact,
                "limit": limit,
                "offset": query.offset,
                "items": items,
            }
        )

    @router.get("/{study_uid}", response_model=StudyDetailOut)
    async def read_study(study_uid: StudyUid, caller: Annotated[Caller, reader]) -> StudyDetailOut:
        """One study with its series."""
        detail = await search.get_study(await caller.connection(), study_uid)
        caller.saw(1 if detail else 0)
        if detail is None:
            raise HTTPException(status_code=404, detail="study not found")
        study = vars(detail.study)
        series = [vars(s) for s in detail.series]
        corrections = [vars(c) for c in detail.corrections]
        return StudyDetailOut.model_validate(
            {
                **study,
                "patient": vars(detail.study.patient),
                "series": series,
                "corrections": corrections,
            }
        )

    return router
