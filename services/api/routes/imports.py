"""Import tasks (permission `imports`): create one, follow its progress (live, as
Server-Sent Events, or as a breakdown), pause, resume or cancel it, list them."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from functools import partial
from typing import Annotated, Any, TypeVar

import asyncpg
from fastapi import APIRouter, Depends, Header, HTTPException, Query
from fastapi.responses import StreamingResponse

from libs.contracts.events import Event, ImportRequested, discovered_event
from libs.db import Conn, import_stats, task_control, tasks
from libs.http.auth import Authenticator, Caller
from libs.runtime.logging import get_logger
from services.api.config import ApiLimits
from services.api.import_events import HEADERS, MEDIA_TYPE, progress_stream
from services.api.routes import page_limit
from services.api.schemas import ImportAccepted, ImportCreate, ImportQuery, TaskOut, TaskPage
from services.api.stats_schemas import TaskStatsOut

log = get_logger(__name__)
Publish = Callable[..., Awaitable[None]]  # publish(*events): sent and acknowledged
T = TypeVar("T")
HELD_BATCH = 500
STATS_PATIENTS_MAX = 1000
EVENTS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {MEDIA_TYPE: {"schema": {"type": "string"}}},
        "description": "`progress` events (data: the task as `GET /v1/imports/{task_id}` "
        "returns it, id: a digest of it), `: heartbeat` comments, and a last `end` event "
        "once the task is completed, failed or cancelled. Reconnecting with `Last-Event-ID` "
        "skips the snapshot already received.",
    }
}


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

    async def found(conn: Conn, task_id: uuid.UUID, caller: Caller) -> tasks.Task:
        task = await tasks.get_task(conn, str(task_id))
        caller.saw(1 if task else 0)
        if task is None:
            raise HTTPException(status_code=404, detail="import task not found")
        return task

    @router.get("/{task_id}/stats", response_model=TaskStatsOut)
    async def import_stats_(
        task_id: uuid.UUID,
        caller: Annotated[Caller, Depends(auth.require("imports", "import.stats"))],
        limit: Annotated[int, Query(ge=1, le=STATS_PATIENTS_MAX)] = 100,
    ) -> TaskStatsOut:
        """Per patient (most instances first, up to `limit`) and per modality breakdown,
        rates, and failed files grouped by stage and reason."""
        async with pool.acquire() as conn:
            task = await found(conn, task_id, caller)
            stats = await import_stats.task_stats(conn, task.id, patients_limit=limit)
        return TaskStatsOut.model_validate(
            {"task_id": task.id, "status": task.status, **asdict(stats)}
        )

    @router.get("/{task_id}/events", response_class=StreamingResponse, responses=EVENTS_DOC)
    async def import_events(
        task_id: uuid.UUID,
        caller: Annotated[Caller, Depends(auth.require("imports", "import.events"))],
        last_event_id: Annotated[str | None, Header(max_length=64)] = None,
    ) -> StreamingResponse:
        """Live progress as Server-Sent Events (`text/event-stream`), until the task ends."""
        async with pool.acquire() as conn:
            await found(conn, task_id, caller)
        stream = progress_stream(
            pool,
            partial(_snapshot, task_id=str(task_id)),
            last_event_id=last_event_id,
            interval=limits.import_events_interval_seconds,
            heartbeat=limits.import_events_heartbeat_seconds,
        )
        return StreamingResponse(stream, media_type=MEDIA_TYPE, headers=HEADERS)

    @router.post("/{task_id}/pause", response_model=TaskOut)
    async def pause_import(
        task_id: uuid.UUID,
        caller: Annotated[Caller, Depends(auth.require("imports", "import.pause"))],
    ) -> TaskOut:
        """Stop scanning and set aside the files not read yet; files already being read
        reach their outcome. Pausing a paused task changes nothing."""
        async with pool.acquire() as conn:
            task = await _control(task_control.pause(conn, str(task_id)), caller)
            return await _task_out(conn, task)

    @router.post("/{task_id}/resume", response_model=TaskOut)
    async def resume_import(
        task_id: uuid.UUID,
        caller: Annotated[Caller, Depends(auth.require("imports", "import.resume"))],
    ) -> TaskOut:
        """Scan on from where it stopped and send the files set aside on through the
        pipeline. Resuming a task that is not paused changes nothing."""
        async with pool.acquire() as conn:
            task, held = await _control(task_control.resume(conn, str(task_id)), caller)
            if held:
                await _emit_held(conn, task.id)
            out = await _task_out(conn, task)
        event = ImportRequested(
            correlation_id=task.id, source="api", task_id=task.id, source_path=task.source_path
        )
        await _announce(publish, event, limits)  # wakes a watcher: the scan resumes at once
        return out

    @router.post("/{task_id}/cancel", response_model=TaskOut)
    async def cancel_import(
        task_id: uuid.UUID,
        caller: Annotated[Caller, Depends(auth.require("imports", "import.cancel"))],
    ) -> TaskOut:
        """Stop for good: no more files are read; those already being read reach their
        outcome, then the task ends `cancelled` with its counters."""
        async with pool.acquire() as conn:
            task = await _control(task_control.cancel(conn, str(task_id)), caller)
            return await _task_out(conn, task)

    async def _emit_held(conn: Conn, task_id: str) -> None:
        """The files set aside while paused, sent again (a failure leaves them to the
        reconciler, which re-emits stale pending files)."""
        try:
            while rows := await task_control.take_held(conn, task_id, HELD_BATCH):
                events: list[Event] = [discovered_event(r) for r in rows]
                async with asyncio.timeout(limits.publish_timeout_seconds):
                    await publish(*events)
        except Exception as exc:
            log.warning("files set aside not re-emitted yet", task_id=task_id, error=repr(exc))

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


async def _snapshot(conn: Conn, *, task_id: str) -> TaskOut | None:
    task = await tasks.get_task(conn, task_id)
    if task is None:
        return None
    out = await _task_out(conn, task)
    out.counters.failures = []  # GET /v1/imports/{id} lists them; a live event stays small
    return out


async def _control(change: Awaitable[T | None], caller: Caller) -> T:
    """A pause/resume/cancel: 404 for an unknown task, 409 when its status forbids it."""
    try:
        result = await change
    except task_control.NotAllowed as exc:
        caller.saw(1)
        raise HTTPException(status_code=409, detail=str(exc)) from None
    caller.saw(1 if result is not None else 0)
    if result is None:
        raise HTTPException(status_code=404, detail="import task not found")
    return result
