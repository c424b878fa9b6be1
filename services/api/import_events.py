"""Live progress of an import task as Server-Sent Events (text/event-stream, WHATWG HTML
"Server-sent events"), written with a plain StreamingResponse (ADR 0022).

The stream is a sequence of snapshots, not of changes: each `progress` event carries the
whole task with its counters, so a client that missed some loses nothing by taking the
next. An event's `id` is a digest of its snapshot: a client reconnecting with
`Last-Event-ID` (browsers do it themselves) is not sent again the snapshot it already has,
only the next change. A comment line is sent as heartbeat when nothing changed for a while
(proxies and load balancers close silent connections), and the stream ends with an `end`
event once the task is completed, failed or cancelled. Each look at the task is two short
queries on a pooled connection; no connection is held between looks.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg

from libs.db import Conn, tasks
from services.api.schemas import TaskOut

RETRY_MS = 2000  # how long a browser waits before reconnecting
MEDIA_TYPE = "text/event-stream"
HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}

Snapshot = Callable[[Conn], Awaitable[TaskOut | None]]


def event_id(payload: str) -> str:
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def sse(event: str, data: str, id_: str | None = None) -> str:
    lines = [f"id: {id_}"] if id_ else []
    lines.append(f"event: {event}")
    lines += [f"data: {line}" for line in data.splitlines() or [""]]
    return "\n".join(lines) + "\n\n"


async def progress_stream(
    pool: asyncpg.Pool,
    snapshot: Snapshot,
    *,
    last_event_id: str | None,
    interval: float,
    heartbeat: float,
) -> AsyncIterator[str]:
    yield f"retry: {RETRY_MS}\n\n"
    last_id = last_event_id
    last_sent = time.monotonic()
    while True:
        async with pool.acquire() as conn:
            task = await snapshot(conn)
        if task is None:  # removed meanwhile (never happens today): nothing more to say
            return
        payload = task.model_dump_json()
        eid = event_id(payload)
        if eid != last_id:
            yield sse("progress", payload, eid)
            last_id, last_sent = eid, time.monotonic()
        if task.status in tasks.ENDED:
            yield sse("end", payload, eid)
            return
        if time.monotonic() - last_sent >= heartbeat:
            yield ": heartbeat\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(interval)
