"""What every pynetdicom association of ours shares: TCP_NODELAY, bounded PDUs, the
transfer syntaxes, a bounded release, and `Associated` (the watcher that aborts an
association on cancellation or when its reactor thread died).

pynetdicom never sets TCP_NODELAY: with Nagle on, each DIMSE response waits for the peer's
delayed ACK (~40 ms), which caps one association at ~20 instances/s. Nor does it bound what
it reads: it buffers whatever PDU length a peer claims (a fake PACS announcing 1 GiB took a
client from 152 MiB to 1.2 GiB). `EVT_CONN_OPEN` fires on both sides (acceptor: right after
accept; requestor: right after connect), before any PDU.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import evt
from pynetdicom.transport import AssociationSocket

# pynetdicom as acceptor picks the first of these the requestor also proposed, so uncompressed
# comes first: a sender offering [JPEG lossy, explicit] for one context never compresses
# for us. Senders of compressed files propose that syntax in a context of its own.
UNCOMPRESSED: list[str] = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]
TRANSFER_SYNTAXES: list[str] = [
    *UNCOMPRESSED,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
]


def set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: disable Nagle on the association's socket."""
    wrapper = event.assoc.dul.socket
    sock = wrapper.socket if wrapper else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if type(wrapper) is AssociationSocket:
        wrapper.__class__ = FastAssociationSocket  # same state, faster recv


NODELAY_HANDLERS: list[tuple[Any, Any]] = [(evt.EVT_CONN_OPEN, set_nodelay)]
# An A-ASSOCIATE-AC is not bound by the maximum we announce (only P-DATA-TF PDUs are) but is
# a few KiB even with 128 presentation contexts.
MIN_PDU_LIMIT = 64 * 1024
log = logging.getLogger(__name__)


def bound_pdus(max_pdu: int) -> Callable[[Any], None]:
    """EVT_CONN_OPEN handler (after `set_nodelay`): a PDU whose header claims more than
    `max_pdu` bytes (at least MIN_PDU_LIMIT) is refused before its body is read, with an
    A-ABORT (pynetdicom's event 19, invalid PDU: PS3.8 AA-8)."""
    limit = max(max_pdu, MIN_PDU_LIMIT)

    def install(event: Any) -> None:
        dul, sock = event.assoc.dul, event.assoc.dul.socket
        if not isinstance(sock, FastAssociationSocket):
            raise TypeError("bound_pdus needs set_nodelay's socket first")
        read_pdu = dul._read_pdu_data
        refused = False

        def read_bounded() -> None:
            nonlocal refused
            if refused:  # the A-ABORT is sent: close rather than read what follows
                sock.close()
                return
            head = sock.recv(6)
            if len(head) == 6:
                kind, length = struct.unpack(">BxL", head)
                if length > limit:
                    log.warning(
                        "PDU of type 0x%02X claims %d bytes (limit %d): A-ABORT",
                        kind,
                        length,
                        limit,
                    )
                    refused = True
                    dul.event_queue.put("Evt19")
                    return
            sock.unread = bytes(head)
            read_pdu()

        dul._read_pdu_data = read_bounded

    return install


def _recv_exactly(self: FastAssociationSocket, nr_bytes: int) -> bytearray:
    """`AssociationSocket.recv` reads 4 KiB per call; a 128 KiB PDU is 32 calls and as
    many `bytearray.extend`s. This reads into one buffer of the PDU's size (bounded by
    `bound_pdus`, which may have read a PDU header first and left it in `unread`)."""
    sock = self.socket
    assert sock is not None
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    got = min(len(self.unread), nr_bytes)
    buffer[:got], self.unread = self.unread[:got], self.unread[got:]
    while got < nr_bytes:
        n = sock.recv_into(view[got:], nr_bytes - got)
        if not n:  # connection closed: return what we have, like pynetdicom
            del buffer[got:]
            break
        got += n
    return buffer


T = TypeVar("T")


def in_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """`fn(*args)` in the event loop's default executor, in the caller's context: what
    it logs carries the caller's bound fields (service, correlation id), as with
    `asyncio.to_thread`, which cannot be shielded and awaited again after a timeout."""
    run = functools.partial(contextvars.copy_context().run, fn, *args)
    return asyncio.get_running_loop().run_in_executor(None, run)


class Associated:
    """An established association: released on success, aborted on an error or a
    cancellation. While it is in use a watcher thread aborts it when `cancel` is set, wakes
    the DIMSE call waiting on a message when either side aborted, and aborts it when its
    reactor thread died (pynetdicom's DIMSE calls and release wait for that thread to pause,
    with no bound)."""

    def __init__(self, assoc: Any, cancel: threading.Event, peer: str) -> None:
        self.assoc = assoc
        self.cancel = cancel
        self.peer = peer
        watch = functools.partial(contextvars.copy_context().run, self._abort_on_cancel)
        self._watch = threading.Thread(target=watch, daemon=True)

    def _abort_on_cancel(self) -> None:
        while self.assoc.is_alive() and not self.assoc.is_released:
            if self.cancel.wait(0.05):
                self.assoc.abort()
            elif not self._aborted():
                continue
            # Wake the call blocked on the next DIMSE message now, rather than after
            # the DIMSE timeout: (None, None) is how pynetdicom says "aborted".
            self.assoc.dimse.msg_queue.put((None, None))
            return
        # The reactor thread ended. Released or aborted: nothing to do. Still marked
        # established: it died (an exception in it), and every DIMSE call would wait for it
        # to pause for ever (pynetdicom polls with no bound): abort, and wake the caller.
        if self.assoc.is_established:
            log.warning("association with %s: its reactor stopped, A-ABORT", self.peer)
            # The abort marks the reactor paused, which frees a DIMSE call waiting for that:
            # its request must not reach the DUL, closed by then (its thread would fail on
            # a P-DATA in state Sta13). The call then finds the (None, None) below.
            self.assoc.dimse.send_msg = _not_sent
            self.assoc.abort()
            self.assoc.dimse.msg_queue.put((None, None))

    def _aborted(self) -> bool:
        """Aborted by either side (a PDU over our limit, the peer's A-ABORT): the reactor is
        paused while a DIMSE call waits, so only the DUL's queue knows yet."""
        return bool(self.assoc.is_aborted or self.assoc.acse.is_aborted())

    def __enter__(self) -> Any:
        self._watch.start()
        return self.assoc

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is None and self.assoc.is_established:
            release(self.assoc)
        elif self.assoc.is_established:
            self.assoc.abort()


def _not_sent(*_: Any, **__: Any) -> None:
    """`DIMSEServiceProvider.send_msg` of an association aborted under a DIMSE call."""


# How long the reactor thread may take to pause before an A-RELEASE (it polls every ms).
PAUSE_WITHIN = 5.0


def release(assoc: Any, pause_within: float = PAUSE_WITHIN) -> bool:
    """A-RELEASE, or A-ABORT when it cannot be made; whether it ended in a release.

    pynetdicom's `Association.release()` (3.0.4, pinned), with its first step bounded: it
    waits for the association's reactor thread to pause (so the reactor does not take the
    A-RELEASE-RP), polling every 0.1 ms with no bound. A reactor thread that died (an
    exception in it leaves the association marked established) never pauses, and the caller
    would spin there for ever. Here a dead reactor, or one not paused within `pause_within`
    seconds, gets an A-ABORT at once. The release itself is bounded by the ACSE timeout
    (pynetdicom aborts when no A-RELEASE-RP comes); anything it raises aborts too."""
    if not assoc.is_established:
        return bool(assoc.is_released)
    checkpoint = assoc._reactor_checkpoint
    checkpoint.clear()
    deadline = time.monotonic() + pause_within
    try:
        while not assoc._is_paused:
            if not assoc.is_alive() or time.monotonic() > deadline:
                log.warning(
                    "association's reactor %s: A-ABORT instead of A-RELEASE",
                    "stopped" if not assoc.is_alive() else "did not pause",
                )
                checkpoint.set()
                assoc.abort()
                return False
            time.sleep(0.0005)
        assoc.acse.negotiate_release()
    except BaseException:
        checkpoint.set()
        if assoc.is_established:
            assoc.abort()
        raise
    checkpoint.set()
    return bool(assoc.is_released)


class FastAssociationSocket(AssociationSocket):
    recv = _recv_exactly
    unread = b""
