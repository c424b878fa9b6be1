"""Waiting in tests: poll with a deadline, never sleep and hope. The one helper for it,
`eventually()` in async code and `eventually_sync()` in threads and sync fixtures; and
`most_files()`, which watches how many files exist at once while a block runs."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _timed_out(timeout: float, what: str | Callable[[], str]) -> AssertionError:
    said = what() if callable(what) else what
    return AssertionError(f"not true after {timeout:g}s" + (f":\n{said}" if said else ""))


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    timeout: float = 30.0,
    *,
    what: str | Callable[[], str] = "",
    interval: float = 0.1,
) -> T:
    """Call `check` (sync or async) until it returns something true, and return that.

    After `timeout` seconds the test fails saying `what` (a callable is called then, e.g.
    for a service's log tail). An exception raised by `check` fails the test at once (a
    check may assert that the process it waits for is still alive).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what)
        await asyncio.sleep(interval)


def eventually_sync(
    check: Callable[[], T],
    timeout: float = 30.0,
    *,
    what: str | Callable[[], str] = "",
    interval: float = 0.05,
) -> T:
    """`eventually()` for code without an event loop (sync fixtures, threads, a Qt test
    that must keep processing events): blocks between calls of `check`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what)
        time.sleep(interval)


@dataclass
class Peak:
    most: int = 0


@contextlib.contextmanager
def most_files(folder: Path, pattern: str) -> Iterator[Peak]:
    """While the block runs, count the files in `folder` matching `pattern` every 2 ms from
    a thread; `.most` is the highest count seen (e.g. temporary copies alive at once)."""
    peak, running = Peak(), True

    def sample() -> None:
        while running:
            peak.most = max(peak.most, len(list(folder.glob(pattern))))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        running = False
        sampler.join()
