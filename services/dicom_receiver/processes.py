"""More than one receiver process on one DICOM port (RECEIVER_PROCESSES, ADR 0026).

The first process (the one `dicomflow up` or the orchestrator starts) opens the port with
SO_REUSEPORT and starts the others, `python -m services.dicom_receiver` with
RECEIVER_PROCESS_INDEX=i and the port it got; each opens the same port, and the kernel
spreads new associations across them. Every process has its own Kafka producer, ledger
connection, group-commit pipeline and storage-commitment SCP (an N-ACTION is answered by the
process its association reached); only the first runs the staging cleanup. Process i > 0
serves its ops port (readiness, metrics) on RECEIVER_OPS_PORT + i.

SIGTERM to the first process: it stops accepting, sends SIGTERM to the others, and each
drains what it had received (every instance in flight is answered or left with its sender).
One that dies stops the service (exit 1) so the orchestrator restarts it whole; one whose
first process dies (kill -9) is sent SIGTERM by the kernel (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys

from libs.runtime.logging import get_logger

log = get_logger(__name__)
PR_SET_PDEATHSIG = 1
PARENT_ENV = "RECEIVER_PARENT_PID"
STOP_SECONDS = 40.0  # the service's drain (30 s) and a margin


class ProcessDied(RuntimeError):
    """A receiver process ended while the service runs."""


class OtherProcesses:
    """Receiver processes 1..count-1, started by process 0."""

    def __init__(self, count: int, port: int, ops_port: int) -> None:
        self.count = count
        self.port = port
        self.ops_port = ops_port
        self.procs: dict[int, asyncio.subprocess.Process] = {}

    async def start(self) -> None:
        for i in range(1, self.count):
            env = os.environ | {
                "RECEIVER_PROCESS_INDEX": str(i),
                "RECEIVER_PORT": str(self.port),
                "RECEIVER_OPS_PORT": str(self.ops_port + i if self.ops_port else 0),
                PARENT_ENV: str(os.getpid()),
            }
            self.procs[i] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.dicom_receiver", env=env
            )
            log.info("receiver process started", index=i, pid=self.procs[i].pid)

    def alive(self) -> bool:
        started = len(self.procs) == self.count - 1
        return started and all(p.returncode is None for p in self.procs.values())

    async def watch(self, stopping: asyncio.Event) -> None:
        """Until `stopping`; raises ProcessDied if one ends first."""
        stop = asyncio.create_task(stopping.wait())
        waits = {asyncio.create_task(p.wait()): i for i, p in self.procs.items()}
        try:
            done, _ = await asyncio.wait([stop, *waits], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [stop, *waits]:
                task.cancel()
        for task in done:
            if task in waits:
                i = waits[task]
                raise ProcessDied(f"receiver process {i} exited with {self.procs[i].returncode}")

    def terminate(self) -> None:
        for p in self.procs.values():
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)

    async def wait(self) -> None:
        """Each stops as the first does; one still running after STOP_SECONDS is killed."""
        for i, p in self.procs.items():
            try:
                await asyncio.wait_for(p.wait(), STOP_SECONDS)
            except TimeoutError:
                log.error("receiver process did not stop: killed", index=i, pid=p.pid)
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()


def die_with_parent() -> None:
    """In process i > 0: SIGTERM when the first process dies, even by SIGKILL (Linux)."""
    parent = int(os.environ.get(PARENT_ENV, "0"))
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent and os.getppid() != parent:  # it died before the prctl took effect
        raise SystemExit("the first receiver process is gone")
