"""What every pynetdicom association of ours shares: TCP_NODELAY and the transfer syntaxes.

pynetdicom never sets TCP_NODELAY: with Nagle on, each DIMSE response waits for the peer's
delayed ACK (~40 ms), which caps one association at ~20 instances/s. `EVT_CONN_OPEN` fires
on both sides (acceptor: right after accept; requestor: right after connect), before any PDU.
"""

from __future__ import annotations

import socket
from typing import Any

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


def _recv_exactly(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """`AssociationSocket.recv` reads 4 KiB per call; a 128 KiB PDU is 32 calls and as
    many `bytearray.extend`s. This reads into one buffer of the PDU's size."""
    sock = self.socket
    assert sock is not None
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    got = 0
    while got < nr_bytes:
        n = sock.recv_into(view[got:], nr_bytes - got)
        if not n:  # connection closed: return what we have, like pynetdicom
            del buffer[got:]
            break
        got += n
    return buffer


class FastAssociationSocket(AssociationSocket):
    recv = _recv_exactly
