"""Run untrusted parsing in child processes that may hang, blow up or die.

A hostile file must cost at most one worker process and one dead letter, never
the service. `IsolatedExecutor` wraps a `ProcessPoolExecutor` whose workers run
under an address-space limit (RLIMIT_AS), and adds what the pool lacks:

- a time limit: a call running longer than `timeout_s` gets its workers killed and
  the pool rebuilt, and fails with `WorkerTimeout`;
- crash attribution: when a worker dies, every call in flight fails with
  BrokenProcessPool and nobody knows whose file did it. Each of those calls is
  retried once, alone in the (rebuilt) pool: an innocent call succeeds, the guilty
  one dies again, alone, and gets `WorkerCrashed`. Calls that were in flight when
  another call timed out are retried the same way;
- MemoryError in a worker (the file needs more than the limit) becomes a
  `PermanentError` naming the limit.

Calls are admitted at most `workers` at a time, so a call never waits inside the
pool and its time limit measures its own work, not the queue.

Every pool starts all its workers when it is created (see `_new_pool` for the
CPython race that makes this necessary). The main module is imported again in
each worker (spawn), so it must keep its work under `if __name__ == "__main__":`.

Python 3.14 adds `ProcessPoolExecutor.kill_workers()`; until then the pool's
`_processes` map is read to kill workers and to tell why one died, and its
`_launch_processes()` starts the workers up front.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import logging
import multiprocessing
import os
import resource
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import asynccontextmanager
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from libs.contracts.errors import PermanentError
from libs.runtime import gc_tuning

R = TypeVar("R")
PR_SET_PDEATHSIG = 1
BOOT_TIMEOUT_S = 120.0


class WorkerTimeout(PermanentError):
    """The call ran past the time limit; its worker was killed."""


class WorkerCrashed(PermanentError):
    """The worker died running this call, alone (segfault, abort, os._exit, OOM kill)."""


class _PoolBroken(Exception):
    """The pool died under a call that may be innocent."""


def _init_worker(limit_bytes: int, preload: tuple[str, ...]) -> None:
    # A parser needs no BLAS threads; each would reserve address space under the cap.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    # pydicom warns about every oddity of a hostile file; the verdict reaches the DLQ instead.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker must not outlive its parent (e.g. after kill -9 of the service): Linux prctl.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # Importing the parser is part of booting, not of the first file's time limit.
    for module in preload:
        importlib.import_module(module)
    gc_tuning.tune()


def _ready() -> int:
    return os.getpid()


def _death(processes: list[BaseProcess]) -> str:
    """Why a worker died, from exit codes; SIGTERM is the pool tidying up the others."""
    for proc in processes:
        if proc.exitcode is None:
            proc.join(1)  # the pool noticed the death first; the exit status follows shortly
        code = proc.exitcode
        if code is None or code == -signal.SIGTERM:
            continue
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exited with status {code}"
    return "cause unknown"


class _Gate:
    """Admission, first come first served: up to `slots` shared calls at once, or one
    exclusive call alone. A waiting exclusive call stops new shared ones.

    Each waiter has its own future and is woken only when admitted (no thundering
    herd with thousands of queued calls), and leaving never awaits, so a cancelled
    call always gives its place back.
    """

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._shared = 0
        self._exclusive = False
        self._waiting_shared: deque[asyncio.Future[None]] = deque()
        self._waiting_exclusive: deque[asyncio.Future[None]] = deque()

    def _admit(self) -> None:
        while not self._exclusive:
            if self._waiting_exclusive:
                if self._shared:
                    return
                waiter = self._waiting_exclusive.popleft()
                if not waiter.done():  # done: cancelled while waiting
                    self._exclusive = True
                    waiter.set_result(None)
                continue
            if not self._waiting_shared or self._shared >= self._slots:
                return
            waiter = self._waiting_shared.popleft()
            if not waiter.done():
                self._shared += 1
                waiter.set_result(None)

    def _leave(self, *, exclusive: bool) -> None:
        if exclusive:
            self._exclusive = False
        else:
            self._shared -= 1
        self._admit()

    async def _enter(self, *, exclusive: bool) -> None:
        waiter = asyncio.get_running_loop().create_future()
        (self._waiting_exclusive if exclusive else self._waiting_shared).append(waiter)
        self._admit()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # admitted, then cancelled
                self._leave(exclusive=exclusive)
            raise

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        await self._enter(exclusive=False)
        try:
            yield
        finally:
            self._leave(exclusive=False)

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        await self._enter(exclusive=True)
        try:
            yield
        finally:
            self._leave(exclusive=True)


class IsolatedExecutor:
    """Runs picklable sync functions in limited child processes, from asyncio."""

    def __init__(
        self,
        workers: int,
        memory_limit_mb: int,
        timeout_s: float,
        *,
        start_method: str = "spawn",  # workers are our children: PDEATHSIG then holds
        preload: tuple[str, ...] = (),
    ) -> None:
        if workers < 1 or memory_limit_mb < 1 or timeout_s <= 0:
            raise ValueError("workers, memory_limit_mb and timeout_s must be positive")
        self._workers = workers
        self._memory_limit_mb = memory_limit_mb
        self._timeout_s = timeout_s
        self._preload = preload
        self._context = multiprocessing.get_context(start_method)
        self._gate = _Gate(workers)
        self._generation = 0
        self._closed = False
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=self._context,
            initializer=_init_worker,
            initargs=(self._memory_limit_mb * 1024 * 1024, self._preload),
        )
        # Start every worker now. Left alone, the pool starts workers inside submit(),
        # and a submit racing with the pool breaking (a worker just crashed) can start
        # a worker the broken pool never stops: its manager thread then joins it
        # forever, and the interpreter cannot exit (CPython 3.11-3.13, seen here).
        launch = getattr(pool, "_launch_processes", None)
        if launch is not None:
            launch()
        # Starts the manager thread; a call waits for these before its time limit starts.
        self._boot = [pool.submit(_ready) for _ in range(self._workers)]
        return pool

    def _processes(self) -> list[BaseProcess]:
        return list((getattr(self._pool, "_processes", None) or {}).values())

    def _rebuild(self, generation: int, *, kill: bool) -> None:
        """Replace the pool of `generation` (once, whoever notices first)."""
        if generation != self._generation or self._closed:
            return
        old = self._pool
        if kill:
            for proc in self._processes():
                proc.kill()
        old.shutdown(wait=False, cancel_futures=True)  # no new worker can start after this
        # Workers of a replaced pool have no further use; one left idle would make the old
        # pool's manager thread (and so interpreter exit) wait for it forever.
        for proc in list((getattr(old, "_processes", None) or {}).values()):
            proc.kill()
        self._generation += 1
        self._pool = self._new_pool()

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        """`fn(*args)` in a worker; see the module docstring for the failure modes."""
        try:
            async with self._gate.shared():
                return await self._attempt(fn, args, alone=False)
        except _PoolBroken:
            pass  # maybe innocent: once more, alone, so the verdict is this call's own
        async with self._gate.exclusive():
            try:
                return await self._attempt(fn, args, alone=True)
            except _PoolBroken as exc:
                raise WorkerCrashed(f"the parser process died ({exc})") from None

    async def _attempt(self, fn: Callable[..., R], args: tuple[Any, ...], *, alone: bool) -> R:
        if self._closed:
            raise RuntimeError("IsolatedExecutor is closed")
        generation = self._generation
        try:
            future = self._pool.submit(fn, *args)
        except BrokenProcessPool:  # broke before this call got in: not a suspect
            self._rebuild(generation, kill=False)
            generation = self._generation
            future = self._pool.submit(fn, *args)
        processes = self._processes()
        try:
            await self._booted()
            return await asyncio.wait_for(asyncio.wrap_future(future), self._timeout_s)
        except TimeoutError:
            self._rebuild(generation, kill=True)
            raise WorkerTimeout(f"parsing took longer than {self._timeout_s:g} s") from None
        except BrokenProcessPool:
            self._rebuild(generation, kill=False)
            raise _PoolBroken(_death(processes) if alone else "pool broken") from None
        except MemoryError:
            raise PermanentError(
                f"file needs more than {self._memory_limit_mb} MB to parse"
            ) from None

    async def _booted(self) -> None:
        """Booting a worker (spawn + imports) is not parsing: it has its own, generous
        limit, since a loaded machine may take seconds per worker (a new pool after a
        crash, the first call after start)."""
        pending = [f for f in self._boot if not f.done()]
        if pending:
            await asyncio.wait_for(
                asyncio.gather(*(asyncio.wrap_future(f) for f in pending)), BOOT_TIMEOUT_S
            )

    async def warm_up(self) -> None:
        """Wait until every worker has booted, so a service is ready only with its workers."""
        await self._booted()

    def close(self) -> None:
        """Stop the workers: idle ones exit at once, a stuck one is killed after 2 s."""
        if self._closed:
            return
        self._closed = True
        processes = self._processes()
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + 2
        for proc in processes:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(2)
