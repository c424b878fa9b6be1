"""`dicomflow up`: every service as its own process, restarted when it dies, logs merged
with a name prefix, all stopped (SIGTERM, then SIGKILL after a grace period) on Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

PR_SET_PDEATHSIG = 1
RESTART_BACKOFF_MAX = 30.0
HEALTHY_UPTIME = 60.0
STOP_GRACE = 30.0


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies, even by SIGKILL (Linux prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ProcSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    infrastructure: bool = False  # stopped after the services, so they can commit and flush


@dataclass
class Managed:
    spec: ProcSpec
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0


class Supervisor:
    def __init__(self, specs: list[ProcSpec], *, width: int | None = None) -> None:
        self.procs = [Managed(s) for s in specs]
        self.stopping = asyncio.Event()
        self.width = width or max(len(s.name) for s in specs)
        # name -> awaitable factory run after that process starts, before the next one starts
        self.on_started: dict[str, Callable[[], Awaitable[object]]] = {}

    def _emit(self, name: str, line: str) -> None:
        sys.stdout.write(f"{name:<{self.width}} | {line}\n")
        sys.stdout.flush()

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self._emit(name, line.decode(errors="replace").rstrip("\n"))

    async def _keep_running(self, m: Managed) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            started = time.monotonic()
            m.process = await asyncio.create_subprocess_exec(
                *m.spec.argv,
                env={**os.environ, **m.spec.env},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
                preexec_fn=_die_with_parent,  # prctl only: safe after fork
            )
            assert m.process.stdout is not None
            pump = asyncio.create_task(self._pump(m.spec.name, m.process.stdout))
            code = await m.process.wait()
            await pump
            if self.stopping.is_set():
                return
            if time.monotonic() - started > HEALTHY_UPTIME:
                backoff = 1.0
            m.restarts += 1
            self._emit(m.spec.name, f"exited with {code}; restarting in {backoff:.0f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        keepers = []
        for m in self.procs:
            keepers.append(asyncio.create_task(self._keep_running(m)))
            if m.spec.name in self.on_started:
                await self.on_started[m.spec.name]()
        await self.stopping.wait()
        await self.stop_all()
        await asyncio.gather(*keepers, return_exceptions=True)

    async def stop_all(self) -> None:
        await self._stop([m for m in self.procs if not m.spec.infrastructure])
        await self._stop([m for m in self.procs if m.spec.infrastructure])

    async def _stop(self, procs: list[Managed]) -> None:
        running = [m for m in procs if m.process and m.process.returncode is None]
        for m in running:
            assert m.process is not None
            m.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for m in running:
            assert m.process is not None
            try:
                await asyncio.wait_for(m.process.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                self._emit(m.spec.name, "did not stop in time; killing")
                m.process.kill()
                await m.process.wait()
