"""The receiver's byte stream: an asyncio BufferedProtocol that receives straight into one
buffer per connection, and hands out views of it.

asyncio's StreamReader copies every byte four times on its way to `readexactly`'s caller
(into its bytearray, a slice, `bytes()` of the slice, and a move when the front is deleted):
callgrind counted those copies as 47% of the receiver's instructions per instance. Here the
kernel writes into our buffer (`recv_into`), `readexactly` returns a memoryview of it, and
the association writes that view to the staging file: no copy in Python at all.

A view is valid until a `readexactly` on the same reader that finds fewer bytes buffered
than it asks for (`buffered()`): incoming bytes only ever land after the last byte handed
out, and the unread rest moves to the front only when such a read begins. The association
relies on it to write the data set fragments of several PDUs with one writev.
"""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import Awaitable, Callable
from typing import Any

MIN_ROOM = 64 * 1024  # below this much free space at the end, reading pauses


class PduReader:
    """`readexactly` over the buffer the protocol fills."""

    def __init__(self, capacity: int) -> None:
        # Anonymous mmap: pages are committed as bytes arrive, not for an idle connection.
        self._map = mmap.mmap(-1, capacity + MIN_ROOM)
        self._view = memoryview(self._map)
        self._capacity = capacity
        self._start = 0  # first unread byte
        self._end = 0  # first free byte
        self._want = 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._error: BaseException | None = None
        self.transport: asyncio.Transport | None = None
        self._paused = False

    def buffered(self) -> int:
        """Bytes received and not yet read: a `readexactly` of at most this many returns at
        once and moves nothing, so the views handed out before stay valid."""
        return self._end - self._start

    async def readexactly(self, n: int) -> memoryview:
        """`n` bytes, as a view valid until the next call; IncompleteReadError at the end of
        the stream, the connection's error if it broke."""
        if n > self._capacity:
            raise ValueError(f"read of {n} bytes exceeds the buffer ({self._capacity})")
        if self._end - self._start < n:
            self._compact()
            while self._end - self._start < n:
                if self._error is not None:
                    raise self._error
                if self._eof:
                    raise asyncio.IncompleteReadError(bytes(self._view[: self._end]), n)
                self._want = n
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        view = self._view[self._start : self._start + n]
        self._start += n
        return view

    def _compact(self) -> None:
        """Move the unread bytes to the front (the views handed out are dead by now)."""
        if self._start:
            unread = self._end - self._start
            if unread:
                self._view[:unread] = self._view[self._start : self._end]
            self._start, self._end = 0, unread
        if self._paused and self.transport is not None and self._room() >= MIN_ROOM:
            self._paused = False
            self.transport.resume_reading()

    def _room(self) -> int:
        return len(self._view) - self._end

    # -- called by the protocol -------------------------------------------------------------

    def get_buffer(self) -> memoryview:
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        if self._room() < MIN_ROOM and not self._paused and self.transport is not None:
            self._paused = True  # resumed when a read makes room
            self.transport.pause_reading()
        waiter = self._waiter
        if waiter is not None and self._end - self._start >= self._want and not waiter.done():
            waiter.set_result(None)

    def finish(self, error: BaseException | None) -> None:
        self._eof = True
        self._error = error
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


OnConnection = Callable[[PduReader, asyncio.StreamWriter], Awaitable[None]]


class PduProtocol(asyncio.streams.FlowControlMixin, asyncio.BufferedProtocol):
    """One connection: a `PduReader` for what arrives, a StreamWriter (with drain) for what
    we send, and `on_connection(reader, writer)` run as a task, like asyncio.start_server's
    callback."""

    def __init__(self, on_connection: OnConnection, capacity: int) -> None:
        super().__init__()
        self._on_connection = on_connection
        self.reader = PduReader(capacity)
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.reader.transport = transport
        loop = asyncio.get_running_loop()
        writer = asyncio.StreamWriter(transport, self, None, loop)
        self._task = loop.create_task(self._run(writer))

    async def _run(self, writer: asyncio.StreamWriter) -> None:
        await self._on_connection(self.reader, writer)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.reader.buffer_updated(nbytes)

    def eof_received(self) -> bool:
        self.reader.finish(None)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.reader.finish(exc)
        self.reader.transport = None  # nothing to pause or resume any more
        super().connection_lost(exc)  # wakes a writer waiting in drain()

    def _get_close_waiter(self, stream: Any) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut
