"""IsolatedExecutor: hangs, memory bombs and crashes cost one call, never the executor.

The misbehaving functions are stdlib callables (picklable by reference, so the
worker processes need not import this test module): `time.sleep` hangs,
`bytearray(2**31)` allocates past the limit, `os._exit` dies, `ctypes.string_at(0)`
reads address 0 and segfaults.
"""

from __future__ import annotations

import asyncio
import ctypes
import operator
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from libs.contracts.errors import NotDicomError, PermanentError
from libs.dicom.extract import extract_file
from libs.dicom.synthetic import make_dataset, write_instance
from libs.runtime.sandbox import IsolatedExecutor, WorkerCrashed, WorkerTimeout, _Gate

TIMEOUT_S = 2.0


@pytest.fixture
async def executor() -> AsyncIterator[IsolatedExecutor]:
    ex = IsolatedExecutor(
        workers=2, memory_limit_mb=512, timeout_s=TIMEOUT_S, preload=(extract_file.__module__,)
    )
    await ex.warm_up()  # booting a worker on a loaded machine must not count as parsing
    try:
        yield ex
    finally:
        ex.close()


async def still_works(ex: IsolatedExecutor) -> None:
    assert await ex.run(operator.add, 2, 3) == 5
    results = await asyncio.gather(*(ex.run(operator.mul, n, n) for n in range(6)))
    assert results == [n * n for n in range(6)]


async def test_runs_functions(executor: IsolatedExecutor) -> None:
    assert await executor.run(operator.add, 1, 2) == 3
    assert await executor.run(os.getpid) != os.getpid()


async def test_extract_file_runs_isolated(executor: IsolatedExecutor, tmp_path: Path) -> None:
    ds = make_dataset(
        patient_id="P1",
        patient_name="Иванов^Иван",
        study_uid="1.2",
        series_uid="1.2.3",
        sop_uid="1.2.3.4",
        charset="ISO_IR 144",
    )
    write_instance(tmp_path / "a.dcm", ds)
    header, hashes = await executor.run(extract_file, str(tmp_path / "a.dcm"))
    assert header.patient.patient_name == "Иванов^Иван"
    assert hashes.has_pixels
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(NotDicomError, match="empty file"):  # the worker's error, as raised
        await executor.run(extract_file, str(tmp_path / "empty.dcm"))


async def test_timeout(executor: IsolatedExecutor) -> None:
    started = time.monotonic()
    with pytest.raises(WorkerTimeout, match=rf"^parsing took longer than {TIMEOUT_S:g} s$"):
        await executor.run(time.sleep, 60)
    assert time.monotonic() - started < TIMEOUT_S + 3
    assert isinstance(WorkerTimeout("x"), PermanentError)
    assert not isinstance(WorkerTimeout("x"), TimeoutError)  # the bus retries TimeoutError
    await still_works(executor)


async def test_memory_limit(executor: IsolatedExecutor) -> None:
    with pytest.raises(PermanentError, match=r"^file needs more than 512 MB to parse$") as info:
        await executor.run(bytearray, 2**31)
    assert type(info.value) is PermanentError
    await still_works(executor)


async def test_exit(executor: IsolatedExecutor) -> None:
    with pytest.raises(WorkerCrashed, match=r"^the parser process died \(exited with status 3\)$"):
        await executor.run(os._exit, 3)
    await still_works(executor)


async def test_segfault(executor: IsolatedExecutor) -> None:
    with pytest.raises(WorkerCrashed, match=r"killed by signal SIGSEGV"):
        await executor.run(ctypes.string_at, 0)
    await still_works(executor)


@pytest.mark.parametrize(
    ("culprit", "args", "error"),
    [
        (time.sleep, (60,), WorkerTimeout),
        (os._exit, (1,), WorkerCrashed),
        (ctypes.string_at, (0,), WorkerCrashed),
        (bytearray, (2**31,), PermanentError),
    ],
)
async def test_innocent_calls_in_flight_survive(
    executor: IsolatedExecutor, culprit: object, args: tuple[object, ...], error: type[Exception]
) -> None:
    """Calls sharing the pool with a culprit get their results; only the culprit fails."""
    innocents = [executor.run(time.sleep, 0.3)] + [
        executor.run(operator.add, n, 1) for n in range(5)
    ]
    results = await asyncio.gather(
        executor.run(culprit, *args),  # type: ignore[arg-type]
        *innocents,
        return_exceptions=True,
    )
    assert isinstance(results[0], error), results[0]
    assert results[1:] == [None, 1, 2, 3, 4, 5]
    await still_works(executor)


async def test_two_crashes_at_once(executor: IsolatedExecutor) -> None:
    results = await asyncio.gather(
        executor.run(os._exit, 1),
        executor.run(ctypes.string_at, 0),
        executor.run(operator.add, 1, 1),
        return_exceptions=True,
    )
    assert isinstance(results[0], WorkerCrashed)
    assert isinstance(results[1], WorkerCrashed)
    assert results[2] == 2


async def test_cancelled_call_frees_its_place(executor: IsolatedExecutor) -> None:
    task = asyncio.create_task(executor.run(time.sleep, 0.5))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await still_works(executor)


async def test_close() -> None:
    ex = IsolatedExecutor(workers=1, memory_limit_mb=256, timeout_s=5)
    assert await ex.run(operator.add, 1, 1) == 2
    ex.close()
    ex.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await ex.run(operator.add, 1, 1)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="positive"):
        IsolatedExecutor(workers=0, memory_limit_mb=256, timeout_s=5)


async def test_workers_start_with_the_pool(executor: IsolatedExecutor) -> None:
    """No worker is started inside submit(): one started while the pool breaks would
    never be stopped, and the interpreter could not exit (a CPython race)."""
    assert len(executor._processes()) == 2
    with pytest.raises(WorkerCrashed):
        await executor.run(os._exit, 1)
    assert len(executor._processes()) == 2  # the rebuilt pool, started in full
    await still_works(executor)
    assert len(executor._processes()) == 2


async def test_gate_admission() -> None:
    """Shared calls up to the slots; an exclusive one waits for them and goes alone,
    ahead of shared calls that arrive after it; a cancelled waiter frees nothing twice."""
    gate = _Gate(2)
    log: list[str] = []
    release = {name: asyncio.Event() for name in ["s1", "s2", "s3", "x", "s4"]}

    async def shared(name: str) -> None:
        async with gate.shared():
            log.append(f"+{name}")
            await release[name].wait()
            log.append(f"-{name}")

    async def exclusive() -> None:
        async with gate.exclusive():
            log.append("+x")
            await release["x"].wait()
            log.append("-x")

    tasks = [asyncio.create_task(shared("s1")), asyncio.create_task(shared("s2"))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(shared("s3")))  # no slot left: waits
    tasks.append(asyncio.create_task(exclusive()))
    tasks.append(asyncio.create_task(shared("s4")))
    await asyncio.sleep(0.01)
    assert log == ["+s1", "+s2"]
    release["s1"].set()
    await asyncio.sleep(0.01)
    assert log == ["+s1", "+s2", "-s1"]  # s3 stays out: an exclusive call is waiting
    tasks[2].cancel()  # s3 gives up its place in the queue
    release["s2"].set()
    await asyncio.sleep(0.01)
    assert log[-2:] == ["-s2", "+x"]
    release["x"].set()
    release["s4"].set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert log[-3:] == ["-x", "+s4", "-s4"]
    assert gate._shared == 0 and not gate._exclusive
