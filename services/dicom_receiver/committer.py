"""Group commit: what concurrent associations received is made durable, recorded and
published together.

An association awaits `commit` for each instance whose bytes it has written to its staging
file. The waiter is resolved only after the file is fdatasynced and its staging folder
fsynced (its name survives a crash), its ledger row exists and the broker acknowledged its
`dicom.discovered.v1` event. Those steps are a pipeline of stages, each taking everything
that reached it while it was busy (so instances of concurrent associations share one worker
thread call for their fdatasyncs and folder fsync, one ledger INSERT and one Kafka round
trip), and each working on the next group while the later stages work on the previous one:
the syncs of one group overlap the INSERT of the one before, and up to MAX_IN_FLIGHT groups
await their acknowledgement at once. INSERTs stay one at a time (one pinned connection). No
group is answered before its own acknowledgement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from libs.contracts.events import Event, discovered_event
from libs.db.ledger import LedgerRow, NewFile
from libs.runtime.logging import get_logger
from services.dicom_receiver.handlers import StagingFile, make_durable

log = get_logger(__name__)

Record = Callable[[Sequence[NewFile]], Awaitable[list[LedgerRow]]]
Publish = Callable[[Sequence[Event]], Awaitable[None]]
# Blocking (run in a worker thread, one call per group): make the files durable (fdatasync,
# close, their folders' fsync); per file the error that kept it from being durable, or None;
# raises when none of them is (a folder fsync failed). `handlers.make_durable`.
SyncFiles = Callable[[Sequence[StagingFile]], list[OSError | None]]
Item = tuple[NewFile, StagingFile | None, "asyncio.Future[None]"]
T = TypeVar("T")
MAX_IN_FLIGHT = 4  # groups whose Kafka acknowledgement is awaited at once


class Committer:
    def __init__(
        self,
        *,
        record: Record,
        publish: Publish,
        batch_size: int,
        sync: SyncFiles | None = None,
    ) -> None:
        self._record = record
        self._publish = publish
        self._batch_size = batch_size
        self._sync = sync if sync is not None else make_durable
        self._queue: asyncio.Queue[Item] = asyncio.Queue()

    async def commit(self, new: NewFile, file: StagingFile | None = None) -> None:
        """Returns once `file` (the instance's open staging file, when given) is durable and
        the instance recorded and published; raises what stopped it (NotRecorded: nothing
        names the file, it may go). A waiter that gives up (cancelled, timed out) before its
        file was synced has the file discarded by the committer."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((new, file, fut))
        await fut

    async def run(self, stopping: asyncio.Event) -> None:
        """Until `stopping` is set and everything queued is answered."""
        synced: asyncio.Queue[list[Item] | None] = asyncio.Queue()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._record_stage(synced))
            try:
                await self._sync_stage(stopping, synced)
            finally:
                synced.put_nowait(None)  # the record stage ends after what is queued

    async def _sync_stage(
        self, stopping: asyncio.Event, synced: asyncio.Queue[list[Item] | None]
    ) -> None:
        while not (stopping.is_set() and self._queue.empty()):
            try:
                async with asyncio.timeout(0.5):  # wait_for would make a task per group
                    first = await self._queue.get()
            except TimeoutError:
                continue
            batch = [first, *drain(self._queue, self._batch_size - 1)]
            for _, file, fut in batch:
                if file is not None and fut.done():  # its sender was answered 0xA700
                    file.discard()
            batch = live(batch)
            files = [file for _, file, _ in batch if file is not None]
            if files:
                try:
                    errors = iter(await asyncio.to_thread(self._sync, files))
                except Exception as exc:  # nothing names the files yet: they may go
                    self._fail(batch, NotRecorded(repr(exc)))
                    continue
                for item in batch:
                    error = next(errors) if item[1] is not None else None
                    if error is not None:
                        self._fail([item], NotRecorded(repr(error)))
                batch = live(batch)
            if batch:
                synced.put_nowait(batch)

    async def _record_stage(self, synced: asyncio.Queue[list[Item] | None]) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        done, waiting = False, list[Item]()
        try:
            while not (done and not waiting):
                while not done and (not waiting or not synced.empty()):
                    group = await synced.get()
                    done = group is None
                    waiting += group or []
                    if len(waiting) >= self._batch_size:
                        break
                # A waiter that gave up (commit timeout) was answered 0xA700: its sender
                # resends, so recording it now would only make a second copy.
                batch = live(waiting[: self._batch_size])
                waiting = waiting[self._batch_size :]
                if not batch:
                    continue
                try:
                    rows = await self._record([new for new, _, _ in batch])
                except Exception as exc:
                    self._fail(batch, NotRecorded(repr(exc)))
                    continue
                await slots.acquire()
                task = asyncio.create_task(self._publish_rows(batch, rows))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                task.add_done_callback(lambda _: slots.release())
        finally:
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _publish_rows(self, batch: list[Item], rows: list[LedgerRow]) -> None:
        try:
            await self._publish([discovered_event(r) for r in rows])
        except Exception as exc:  # recorded: the reconciler re-emits it, the file must stay
            self._fail(batch, exc)
            return
        for _, _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    def _fail(self, batch: list[Item], exc: Exception) -> None:
        """Every waiting sender gets a failure status and retries."""
        log.warning("commit failed", instances=len(batch), error=repr(exc))
        for _, _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)


def drain(queue: asyncio.Queue[T], most: int) -> list[T]:
    """What `queue` holds now, up to `most` items, without waiting."""
    out: list[T] = []
    while len(out) < most and not queue.empty():
        out.append(queue.get_nowait())
    return out


def live(batch: list[Item]) -> list[Item]:
    return [item for item in batch if not item[2].done()]


class NotRecorded(Exception):
    """The folder fsync or the ledger INSERT failed: nothing names the staged file, which
    may go."""
