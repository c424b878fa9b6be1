"""QIDO-RS (PS3.18 §10.6): search for studies, series and instances (permission `read`).

Answers are `application/dicom+json`; no match is 204 (PS3.18 §8.3.4.4.1); a further page
is announced with `Warning: 299` (PS3.18 §8.3.4.1), as are ignored query keys.
"""

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from libs.db import dicomweb as db
from libs.http.auth import Authenticator, Caller
from services.api.dicomweb.attributes import Level, selected, to_json
from services.api.dicomweb.common import DICOM_JSON, Uid, base_url, negotiate_json
from services.api.dicomweb.query import Query, parse

Finder = Callable[..., Awaitable[list[dict[str, Any]]]]
FINDERS: dict[Level, Finder] = {
    "study": db.find_studies,
    "series": db.find_series,
    "instance": db.find_instances,
}


def qido_router(pool: asyncpg.Pool, auth: Authenticator, max_limit: int) -> APIRouter:
    router = APIRouter(tags=["DICOMweb"])
    searcher = Depends(auth.require("read", "dicomweb.search"))

    async def search(
        request: Request,
        caller: Caller,
        level: Level,
        fixed: dict[str, Any],
        across: set[Level],
    ) -> Response:
        negotiate_json(request)
        query = parse(request.query_params, level, fixed, max_limit=max_limit)
        async with pool.acquire() as conn:
            rows = await FINDERS[level](
                conn, query.filter, limit=query.limit + 1, offset=query.offset
            )
        query.more = len(rows) > query.limit
        rows = rows[: query.limit]
        caller.saw(len(rows))
        attrs = selected(level, query.include, across)
        base = base_url(request)
        return _answer([to_json(r, attrs, base) for r in rows], query)

    @router.get("/studies", summary="Search for studies")
    async def studies(request: Request, caller: Annotated[Caller, searcher]) -> Response:
        return await search(request, caller, "study", {}, set())

    @router.get("/series", summary="Search for series (all studies)")
    async def all_series(request: Request, caller: Annotated[Caller, searcher]) -> Response:
        return await search(request, caller, "series", {}, {"study"})

    @router.get("/studies/{study}/series", summary="Search for a study's series")
    async def study_series(
        study: Uid, request: Request, caller: Annotated[Caller, searcher]
    ) -> Response:
        return await search(request, caller, "series", {"study_uids": [study]}, set())

    @router.get("/instances", summary="Search for instances (all studies)")
    async def all_instances(request: Request, caller: Annotated[Caller, searcher]) -> Response:
        return await search(request, caller, "instance", {}, {"study", "series"})

    @router.get("/studies/{study}/instances", summary="Search for a study's instances")
    async def study_instances(
        study: Uid, request: Request, caller: Annotated[Caller, searcher]
    ) -> Response:
        return await search(request, caller, "instance", {"study_uids": [study]}, {"series"})

    @router.get(
        "/studies/{study}/series/{series}/instances", summary="Search for a series' instances"
    )
    async def series_instances(
        study: Uid, series: Uid, request: Request, caller: Annotated[Caller, searcher]
    ) -> Response:
        fixed = {"study_uids": [study], "series_uids": [series]}
        return await search(request, caller, "instance", fixed, set())

    return router


def _answer(items: list[dict[str, Any]], query: Query) -> Response:
    warnings = [f'299 dicomflow: "{w}"' for w in query.warnings]
    if query.more:
        warnings.append('299 dicomflow: "There are more results: ask again with a larger offset"')
    headers = {"Warning": ", ".join(warnings)} if warnings else {}
    if not items:
        return Response(status_code=204, headers=headers)
    body = json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, media_type=DICOM_JSON, headers=headers)
