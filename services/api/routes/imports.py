"""Import tasks (permission `imports`): create one, follow its progress, list them."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Query

from libs.contracts.events import ImportRequested
from libs.db import Conn, tasks
from libs.http.auth import Authenticator, Caller
from libs.runtime.logging import get_logger
from services.api.config import ApiLimits
from services.api.routes import page_limit
from services.api.schemas import ImportAccepted, ImportCreate, ImportQuery, TaskOut, TaskPage

log = get_logger(__name__)
Publish = Callable[[ImportRequested], Awaitable[None]]


async def _task_out(conn: Conn, task: tasks.Task) -> TaskOut:
    return with_counters(task, await tasks.task_counters(conn, task.id))


def with_counters(task: tasks.Task, counters: tasks.TaskCounters) -> TaskOut:
    fields = asdict(task)
    fields["task_id"] = fields.pop("id")
    return TaskOut.model_validate({**fields, "counters": asdict(counters)})


async def _announce(publish: Publish, event: ImportRequested, limits: ApiLimits) -> None:
    """Best effort: the task row is the source of truth and the watcher polls pending tasks."""
    try:
        async with asyncio.timeout(limits.publish_timeout_seconds):
            await publish(event)
    except Exception as exc:
        log.warning(
            "import.requested not published; the watcher will find the task by polling",
            task_id=event.task_id,
            error=repr(exc),
        )


def imports_router(
    pool: asyncpg.Pool, publish: Publish, auth: Authenticator, limits: ApiLimits
) -> APIRouter:
    router = APIRouter(prefix="/v1/imports", tags=["imports"])
    creator = Depends(auth.require("imports", "import.create"))
    reader = Depends(auth.require("imports", "import.read"))
    lister = Depends(auth.require("imports", "import.list"))

    @router.post("", status_code=202, response_model=ImportAccepted)
    async def create_import(
        body: ImportCreate, caller: Annotated[Caller, creator]
    ) -> ImportAccepted:
        """Create an import task for a folder; the watcher scans it."""
        async with pool.acquire() as conn:
            task = await tasks.create_task(
                conn,
                source_path=body.source_path,
                description=body.description,
                created_by=caller.created_by,
            )
        caller.saw(1)
        event = ImportRequested(
            correlation_id=task.id, source="api", task_id=task.id, source_path=task.source_path
        )
        await _announce(publish, event, limits)
        return ImportAccepted(task_id=task.id)

    @router.get("/{task_id}", response_model=TaskOut)
    async def read_import(task_id: uuid.UUID, caller: Annotated[Caller, reader]) -> TaskOut:
        """One task with its counters and the first failures."""
        async with pool.acquire() as conn:
            task = await tasks.get_task(conn, str(task_id))
            caller.saw(1 if task else 0)
            if task is None:
                raise HTTPException(status_code=404, detail="import task not found")
            return await _task_out(conn, task)

    @router.get("", response_model=TaskPage)
    async def list_imports(
        query: Annotated[ImportQuery, Query()], caller: Annotated[Caller, lister]
    ) -> TaskPage:
        """Tasks, newest first, each with its counters."""
        limit = page_limit(query.limit, limits)
        async with pool.acquire() as conn:
            found = await tasks.list_tasks(
                conn, limit=limit, offset=query.offset, status=query.status
            )
            counters = await tasks.counters_for(conn, [t.id for t in found])
        items = [with_counters(t, counters[t.id]) for t in found]
        caller.saw(len(items))
        return TaskPage(limit=limit, offset=query.offset, items=items)

    return router
