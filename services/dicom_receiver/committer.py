"""The bridge from pynetdicom's acceptor threads to asyncio: group commit.

Each acceptor thread hands over an instance it has written and blocks on a
`concurrent.futures.Future`. One coroutine takes everything queued so far (so
instances of concurrent associations share one directory fsync, one ledger
INSERT and one Kafka round trip), and resolves each future only after the
ledger row exists and the broker acknowledged the `dicom.discovered.v1` event.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from libs.db.ledger import LedgerRow, NewFile, discovered_event
from libs.events import Event
from libs.logging import get_logger
from services.dicom_receiver.handlers import sync_dirs

log = get_logger(__name__)

Record = Callable[[Sequence[NewFile]], Awaitable[list[LedgerRow]]]
Publish = Callable[[Sequence[Event]], Awaitable[None]]
Item = tuple[NewFile, Path, "concurrent.futures.Future[None]"]


class Committer:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        record: Record,
        publish: Publish,
        batch_size: int,
        sync: bool = True,
    ) -> None:
        self._loop = loop
        self._record = record
        self._publish = publish
        self._batch_size = batch_size
        self._sync = sync
        self._queue: asyncio.Queue[Item] = asyncio.Queue()

    def submit(self, new: NewFile, path: Path) -> concurrent.futures.Future[None]:
        """Thread-safe: the future resolves once the instance is recorded and published."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (new, path, fut))
        return fut

    async def run(self, stopping: asyncio.Event) -> None:
        while not (stopping.is_set() and self._queue.empty()):
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout=0.5)
            except TimeoutError:
                continue
            batch = [first]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self.commit(batch)

    async def commit(self, batch: list[Item]) -> None:
        try:
            if self._sync:
                await asyncio.to_thread(sync_dirs, [path for _, path, _ in batch])
            rows = await self._record([new for new, _, _ in batch])
            await self._publish([discovered_event(r) for r in rows])
        except Exception as exc:  # every waiting sender gets a failure status and retries
            log.warning("commit failed", instances=len(batch), error=repr(exc))
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for _, _, fut in batch:
            if not fut.done():
                fut.set_result(None)
