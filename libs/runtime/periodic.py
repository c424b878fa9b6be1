"""Periodic rounds: a plain function run every N seconds until the service stops.

A round is an `async def` of no arguments (bind its ports with `functools.partial`) that
returns `None` to wait the usual interval, or `After(seconds)` to wait that long this time
(`AT_ONCE`: more is waiting, go on at once; a longer back-off after an outage). A failed
round is logged and the next one runs after the interval: the service keeps going through
outages, and each round's own work is idempotent or resumes from a watermark.

`single_reader` makes a round exclusive across replicas: a replica that does not hold the
lock skips the round (see `libs.db.locks.SingleReader`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Protocol

from libs.runtime.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class After:
    """What a round returns to wait other than its usual interval before the next one."""

    seconds: float


AT_ONCE = After(0.0)
Round = Callable[[], Awaitable[After | None]]


class Exclusive(Protocol):
    def held(self) -> AbstractAsyncContextManager[bool]: ...


async def pause(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep unless stopping; False when the service is stopping."""
    try:
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
    except TimeoutError:
        return True
    return False


async def run_round(name: str, fn: Round, single_reader: Exclusive | None = None) -> After | None:
    """One round, under the lock when given; a failure is logged, never raised."""
    try:
        if single_reader is None:
            return await fn()
        async with single_reader.held() as mine:
            return await fn() if mine else None
    except Exception as exc:  # the next round tries again
        log.warning("round failed", round=name, error=repr(exc))
        return None


async def periodically(
    stopping: asyncio.Event,
    name: str,
    seconds: float,
    fn: Round,
    *,
    single_reader: Exclusive | None = None,
    wait_first: bool = False,
) -> None:
    """Run `fn` every `seconds` (or what it asks for) until `stopping` is set."""
    if wait_first and not await pause(stopping, seconds):
        return
    while not stopping.is_set():
        wait = await run_round(name, fn, single_reader)
        delay = seconds if wait is None else wait.seconds
        if delay <= 0:
            await asyncio.sleep(0)  # at once, but never without letting others run
        elif not await pause(stopping, delay):
            return


@asynccontextmanager
async def meanwhile(name: str, seconds: float, fn: Round) -> AsyncIterator[None]:
    """Run the round `fn` every `seconds` while the block runs (a lease kept alive during
    a long piece of work); the first run is after `seconds`."""
    task = asyncio.create_task(
        periodically(asyncio.Event(), name, seconds, fn, wait_first=True), name=name
    )
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
