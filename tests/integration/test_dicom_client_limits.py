"""DicomClient against a hostile peer: a PDU longer than the maximum we announced is refused
with an A-ABORT before it is read, so a fake PACS claiming a 1 GiB PDU costs no memory."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time

import pytest
from pynetdicom import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from libs.dicom_net.client import DEFAULT_MAX_PDU, DicomClient
from libs.dicom_net.errors import DicomNetError
from libs.dicom_net.models import Peer
from libs.dicom_net.transport import UNCOMPRESSED
from services.dicom_receiver.pdus import ABORT, HEADER, P_DATA_TF, AssociateRequest, negotiate

pytestmark = pytest.mark.integration
GIB = 1 << 30


def recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def read_pdu(conn: socket.socket) -> tuple[int, bytes]:
    kind, length = HEADER.unpack(recv_exactly(conn, 6))
    return kind, recv_exactly(conn, length)


class HostilePacs(threading.Thread):
    """Accepts the association, reads the C-ECHO request, then announces a P-DATA-TF of
    `claim` bytes and sends up to `send` of them, reading whatever the client answers."""

    def __init__(self, claim: int, send: int) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.claim, self.send = claim, send
        self.sent = 0
        self.answer = b""

    def run(self) -> None:
        conn, _ = self.server.accept()
        with conn, self.server:
            _, body = read_pdu(conn)
            ac, _ = negotiate(
                AssociateRequest.decode(body), [build_context(Verification, UNCOMPRESSED)], 16384
            )
            conn.sendall(ac)
            read_pdu(conn)  # the C-ECHO-RQ
            conn.sendall(HEADER.pack(P_DATA_TF, self.claim))
            chunk = bytes(1 << 20)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                writable = [conn] if self.sent < self.send else []
                r, w, _ = select.select([conn], writable, [], 0.2)
                if r:
                    data = conn.recv(65536)
                    if not data:
                        return  # the client closed the connection
                    self.answer += data
                if w:
                    try:
                        self.sent += conn.send(chunk)
                    except OSError:  # reset by the client: what it sent first is still queued
                        self._drain(conn)
                        return

    def _drain(self, conn: socket.socket) -> None:
        """Read what the client sent before it reset the connection (an A-ABORT the select
        above had not reported yet): Linux keeps it readable after the reset."""
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                self.answer += data


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_pdu_longer_than_our_maximum_is_refused_with_an_a_abort() -> None:
    warm = HostilePacs(claim=GIB, send=256 << 20)  # pynetdicom's lazy imports, thread stacks
    warm.start()
    with pytest.raises(DicomNetError):
        await DicomClient(Peer(ae_title="W", host="127.0.0.1", port=warm.port), retries=0).echo()
    await asyncio.to_thread(warm.join, 30)
    peer = HostilePacs(claim=GIB, send=256 << 20)
    peer.start()
    client = DicomClient(
        Peer(ae_title="HOSTILE", host="127.0.0.1", port=peer.port), timeout=10, retries=0
    )
    assert client.max_pdu == DEFAULT_MAX_PDU > 0
    base, peak, running = rss(), 0, True

    def sample() -> None:
        nonlocal peak
        while running:
            peak = max(peak, rss())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        with pytest.raises(DicomNetError):
            await client.echo()
    finally:
        running = False
        sampler.join()
    elapsed = time.monotonic() - started
    await asyncio.to_thread(peer.join, 30)
    growth = peak - base
    print(
        f"\n1 GiB PDU claim: RSS {base >> 20} MiB -> peak {peak >> 20} MiB "
        f"(+{growth >> 20} MiB), peer sent {peer.sent >> 20} MiB, refused in {elapsed:.2f} s"
    )
    assert growth < 16 << 20, f"RSS grew by {growth >> 20} MiB"
    assert peer.answer[:1] == bytes([ABORT]), f"no A-ABORT: {peer.answer[:16]!r}"
    assert elapsed < 5
