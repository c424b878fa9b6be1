"""Group commit: what concurrent associations received is recorded and published together.

An association awaits `commit` for each instance it has made durable. One coroutine takes
everything queued so far (so instances of concurrent associations share one ledger INSERT
and one Kafka round trip), and resolves each waiter only after the ledger row exists and the
broker acknowledged the `dicom.discovered.v1` event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from libs.contracts.events import Event
from libs.db.ledger import LedgerRow, NewFile, discovered_event
from libs.runtime.logging import get_logger

log = get_logger(__name__)

Record = Callable[[Sequence[NewFile]], Awaitable[list[LedgerRow]]]
Publish = Callable[[Sequence[Event]], Awaitable[None]]
Item = tuple[NewFile, "asyncio.Future[None]"]


class Committer:
    def __init__(self, *, record: Record, publish: Publish, batch_size: int) -> None:
        self._record = record
        self._publish = publish
        self._batch_size = batch_size
        self._queue: asyncio.Queue[Item] = asyncio.Queue()

    async def commit(self, new: NewFile) -> None:
        """Returns once the instance is recorded and published; raises what stopped it."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((new, fut))
        await fut

    async def run(self, stopping: asyncio.Event) -> None:
        while not (stopping.is_set() and self._queue.empty()):
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout=0.5)
            except TimeoutError:
                continue
            batch = [first]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)

    async def _commit(self, batch: list[Item]) -> None:
        # A waiter that gave up (commit timeout) was answered 0xA700: its sender resends, so
        # recording it now would only make a second copy.
        batch = [item for item in batch if not item[1].done()]
        if not batch:
            return
        try:
            rows = await self._record([new for new, _ in batch])
        except Exception as exc:
            self._fail(batch, NotRecorded(repr(exc)))
            return
        try:
            await self._publish([discovered_event(r) for r in rows])
        except Exception as exc:  # recorded: the reconciler re-emits it, the file must stay
            self._fail(batch, exc)
            return
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    def _fail(self, batch: list[Item], exc: Exception) -> None:
        """Every waiting sender gets a failure status and retries."""
        log.warning("commit failed", instances=len(batch), error=repr(exc))
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)


class NotRecorded(Exception):
    """The ledger INSERT failed: nothing names the staged file, which may go."""
