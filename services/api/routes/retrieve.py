"""On-demand retrieves from an upstream PACS (permission `imports`: ops, admin): ask for a
study or a query's studies, follow the task. The PACS watcher runs it; see
`libs/db/retrieves.py` for how the task is stored and `services/pacs_watcher/retrieves.py`
for how it runs."""

import uuid
from dataclasses import asdict
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, HTTPException
from fastapi.exceptions import RequestValidationError

from libs.db import pacs as pacs_db
from libs.db import retrieves, tasks
from libs.dicom_net.requests import RetrieveRequest
from libs.http.auth import Authenticator, Caller
from services.api.routes.imports import with_counters
from services.api.schemas import ImportAccepted, RetrieveOut, RetrieveStateOut


def _unknown_pacs(name: str, known: list[str]) -> RequestValidationError:
    names = ", ".join(known) or "none (is the pacs-watcher running with WATCHER_PACS?)"
    return RequestValidationError(
        [
            {
                "type": "unknown_pacs",
                "loc": ("body", "pacs"),
                "msg": f"unknown PACS '{name}'; known: {names}",
                "input": name,
            }
        ]
    )


def retrieve_router(pool: asyncpg.Pool, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/v1/retrieve", tags=["retrieve"])
    creator = Depends(auth.require("imports", "retrieve.create"))
    reader = Depends(auth.require("imports", "retrieve.read"))

    @router.post("", status_code=202, response_model=ImportAccepted)
    async def create_retrieve(
        body: RetrieveRequest, caller: Annotated[Caller, creator]
    ) -> ImportAccepted:
        """Retrieve a study (`study_uid`) or the studies a `query` matches from a configured
        PACS; the PACS watcher runs the task (C-MOVE to our receiver or C-GET)."""
        async with pool.acquire() as conn:
            known = await retrieves.known_pacs(conn)
            if body.pacs not in known:
                raise _unknown_pacs(body.pacs, known)
            task = await retrieves.create(conn, body, created_by=caller.created_by)
        caller.saw(1)
        return ImportAccepted(task_id=task.id)

    @router.get("/{task_id}", response_model=RetrieveOut)
    async def read_retrieve(task_id: uuid.UUID, caller: Annotated[Caller, reader]) -> RetrieveOut:
        """The task, its ledger counters (C-GET files), and the retrieve's progress: studies
        matched, the PACS's sub-operation counts, instances now in the index."""
        async with pool.acquire() as conn:
            task = await tasks.get_task(conn, str(task_id))
            found = await retrieves.get(conn, str(task_id)) if task else None
            caller.saw(1 if found else 0)
            if task is None or found is None:
                raise HTTPException(status_code=404, detail="retrieve task not found")
            state, studies = found
            counters = await tasks.task_counters(conn, task.id)
            indexed = await pacs_db.indexed_counts(conn, [s.study_uid for s in studies])
        out = with_counters(task, counters)
        progress = retrieves.progress(studies, indexed)
        detail = RetrieveStateOut.model_validate(
            {
                **asdict(state),
                "progress": asdict(progress),
                "studies": [asdict(s) for s in studies[: retrieves.STUDIES_SHOWN]],
            }
        )
        return RetrieveOut.model_validate({**out.model_dump(), "retrieve": detail})

    return router
