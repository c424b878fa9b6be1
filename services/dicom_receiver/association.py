"""One association, acceptor side, on asyncio streams (PS3.8 section 9.2, PS3.7 annex E).

A-ASSOCIATE-RQ → admission and negotiation → P-DATA-TF until A-RELEASE-RQ or A-ABORT.
A C-STORE's data set fragments go straight to a staging file as they arrive; when the last
one is in, the file is made durable, recorded and published (`Store`), and only then is the
response sent. No polling, no thread per association, nothing per instance held in memory.
Whatever ends the association early (abort, timeout, lost connection, protocol error) leaves
the instance in flight unanswered, so the sender keeps it; its partial file is removed.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pynetdicom.presentation import PresentationContext

from libs.runtime.logging import get_logger
from services.dicom_receiver import dimse, pdus
from services.dicom_receiver.dimse import Command
from services.dicom_receiver.handlers import FilePool, Peer, StagingFile
from services.dicom_receiver.pdus import AssociateRequest, ProtocolError
from services.dicom_receiver.transport import PduReader

log = get_logger(__name__)

CHUNK = 1 << 20  # data set bytes read (and written) at a time
MAX_ASSOCIATE_RQ = 256 * 1024
MAX_ACTION_BYTES = 4 << 20  # an N-ACTION data set naming ~40,000 instances
ARTIM_SECONDS = 5.0  # at most (and at most the ACSE timeout): the requestor's close, awaited

# Why an association is refused, and the A-ASSOCIATE-RJ (result, source, diagnostic) sent.
Refusal = tuple[str, tuple[int, int, int]]
Admit = Callable[[AssociateRequest, str], Refusal | None]
# (peer, staged file) -> the status to answer; the file is finished (or discarded) by it.
Store = Callable[[Peer, StagingFile], Awaitable[int]]
# (association, context id, transfer syntax, N-ACTION-RQ, its data set) -> N-ACTION-RSP
OnAction = Callable[["Association", int, str, Command, bytes], bytes]


@dataclass(frozen=True)
class Limits:
    max_pdu: int  # what we accept (0 = unlimited)
    acse_timeout: float
    network_timeout: float
    max_instance_bytes: int = 0  # a larger data set is dropped and refused (0 = no cap)
    min_free_bytes: int = 0  # a C-STORE arriving with less free in staging is refused


@dataclass
class Pending:
    """A command whose data set is still arriving."""

    command: Command
    context_id: int
    file: StagingFile | None  # None: the data set is read and dropped, `status` answered
    status: int = dimse.SUCCESS
    buffer: bytearray | None = None  # an N-ACTION's data set (small, bounded), kept in memory
    answer: bool = True  # False for a response's data set: nothing to answer


class Association:
    def __init__(
        self,
        reader: PduReader,
        writer: asyncio.StreamWriter,
        *,
        root: Path,
        supported: list[PresentationContext],
        limits: Limits,
        admit: Admit,
        store: Store,
        on_action: OnAction | None = None,
        files: FilePool | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.root = root
        self.supported = supported
        self.limits = limits
        self.admit = admit
        self.store = store
        self.on_action = on_action
        self.files = files  # staging files created ahead (None: each created when needed)
        self.peer_max_pdu = 0  # the largest PDU the peer accepts from us (0 = unlimited)
        self.message_id = 0
        host, port = writer.get_extra_info("peername")[:2]
        self.peer = Peer("", str(host), int(port), uuid.uuid4().hex)
        self.contexts: dict[int, PresentationContext] = {}
        self.command = bytearray()
        self.pending: Pending | None = None
        self.established = False
        self.released = False  # our A-RELEASE-RP sent
        # Idle watchdog (see `_read`): one timer per association, not one per read.
        self._reading = False  # awaiting the peer's bytes
        self._progress = 0.0  # loop time the last read began or ended
        self._watchdog: asyncio.TimerHandle | None = None
        self._timed_out = False
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def run(self) -> None:
        try:
            if await self._associate():
                self.established = True
                await self._transfer_watched()
                self.established = False
                if self.released:
                    await self._until_peer_closes()
            else:  # rejected
                await self._until_peer_closes()
        except ProtocolError as exc:
            self._log("association aborted: protocol error", error=str(exc))
            self.writer.write(pdus.abort(exc.reason))
        except TimeoutError:
            self._log("association aborted: peer silent", error="timeout")
            self.writer.write(pdus.abort(0x00))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self._log("association lost", error=repr(exc))
        except Exception:  # a bug of ours must not leave the peer waiting
            log.exception("association aborted: internal error", correlation_id=self.peer.assoc_id)
            self.writer.write(pdus.abort(0x00))
        finally:
            self.established = False
            if self.pending is not None and self.pending.file is not None:
                self.pending.file.discard()
            self.writer.close()

    def abort(self) -> None:
        """Ours to end (shutdown): an A-ABORT; what is unanswered stays with the sender."""
        if not self.writer.is_closing():
            self.writer.write(pdus.abort(0x00, source=0x00))

    # -- association establishment ---------------------------------------------------------

    async def _associate(self) -> bool:
        async with asyncio.timeout(self.limits.acse_timeout):  # one deadline for the whole RQ
            kind, length = pdus.HEADER.unpack(await self.reader.readexactly(pdus.HEADER.size))
            if kind != pdus.ASSOCIATE_RQ:
                raise ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type {kind:#04x}")
            if length > MAX_ASSOCIATE_RQ:
                raise ProtocolError("A-ASSOCIATE-RQ too long", pdus.ABORT_INVALID_PARAMETER)
            body = bytes(await self.reader.readexactly(length))
        rq = AssociateRequest.decode(body)
        self.peer_max_pdu = rq.max_pdu
        self.peer = Peer(rq.calling_ae, self.peer.address, self.peer.port, self.peer.assoc_id)
        refusal = self.admit(rq, self.peer.address)
        if refusal is not None:
            self.writer.write(pdus.reject(*refusal[1]))
            await self.writer.drain()
            return False
        accept, self.contexts = pdus.negotiate(rq, self.supported, self.limits.max_pdu)
        self.writer.write(accept)
        log.info(
            "association accepted",
            correlation_id=self.peer.assoc_id,
            origin=self.peer.origin,
            contexts=len(self.contexts),
        )
        return True

    async def _until_peer_closes(self) -> None:
        """After our A-ASSOCIATE-RJ or A-RELEASE-RP the requestor closes the connection; we
        close it only when it has not within the ARTIM timer (PS3.8 9.2, state Sta13).
        Closing at once raced the requestor's read of our answer: a close with bytes of its
        still unread on our side resets the connection, and the answer can be lost."""
        try:
            async with asyncio.timeout(min(self.limits.acse_timeout, ARTIM_SECONDS)):
                while True:  # anything it still sends is read and ignored
                    await self.reader.readexactly(1)
        except TimeoutError:
            self._log("the peer did not close the connection in time: closed")
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # closed by the peer, as it should

    # -- data transfer ---------------------------------------------------------------------

    async def _transfer_watched(self) -> None:
        """`_transfer` under the idle watchdog: a peer silent for `network_timeout` while we
        wait for its bytes is a TimeoutError. An `asyncio.timeout` around each read cost a
        timer scheduled and cancelled per read (~10 per instance); this is one timer that
        re-arms itself only when it fires."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        within = self.limits.network_timeout

        def check() -> None:
            idle = loop.time() - self._progress
            if self._reading and idle >= within:
                self._timed_out = True
                task.cancel()
                return
            self._watchdog = loop.call_at(
                (self._progress if self._reading else loop.time()) + within, check
            )

        self._progress = loop.time()
        self._watchdog = loop.call_at(self._progress + within, check)
        try:
            await self._transfer()
        except asyncio.CancelledError:
            if not self._timed_out:
                raise
            task.uncancel()
            raise TimeoutError from None
        finally:
            self._watchdog.cancel()

    async def _transfer(self) -> None:
        while True:
            kind, length = await self._header()
            if kind == pdus.P_DATA_TF:
                if length <= CHUNK:  # one read for the whole PDU, its items parsed in memory
                    await self._pdata_whole(await self._read(length))
                else:
                    await self._pdata(length)
            elif kind == pdus.RELEASE_RQ:
                if length != 4:
                    raise ProtocolError("A-RELEASE-RQ length is not 4", 0x06)
                await self._read(length)
                if self.pending is not None:  # an unanswered C-STORE is no clean release
                    raise ProtocolError("A-RELEASE-RQ while a data set is arriving")
                self.writer.write(pdus.release_reply())
                await self.writer.drain()
                self.released = True
                return
            elif kind == pdus.ABORT:
                await self._read(min(length, 64))
                self._log("association aborted by the peer")
                return
            elif kind in (pdus.ASSOCIATE_RQ, pdus.ASSOCIATE_AC, pdus.ASSOCIATE_RJ, pdus.RELEASE_RP):
                raise ProtocolError(f"unexpected PDU type {kind:#04x}")
            else:
                raise ProtocolError(f"unrecognised PDU type {kind:#04x}", 0x01)

    async def _pdata(self, length: int) -> None:
        """Every PDV item of one P-DATA-TF (PS3.8 9.3.5) longer than CHUNK, streamed."""
        while length > 0:
            if length < pdus.ITEM.size:
                raise ProtocolError("truncated PDV item", pdus.ABORT_INVALID_PARAMETER)
            size, context_id, control = pdus.ITEM.unpack(await self._read(pdus.ITEM.size))
            if size < 2 or size + 4 > length:
                raise ProtocolError("PDV item length invalid", pdus.ABORT_INVALID_PARAMETER)
            length -= size + 4
            if context_id not in self.contexts:
                raise ProtocolError(f"PDV on presentation context {context_id}, not accepted")
            last = bool(control & pdus.LAST)
            if control & pdus.COMMAND:
                if len(self.command) + size - 2 > dimse.MAX_COMMAND_BYTES:  # before reading
                    raise ProtocolError("command set too long", pdus.ABORT_INVALID_PARAMETER)
                await self._command_fragment(context_id, await self._read(size - 2), last=last)
            else:
                await self._dataset_fragment(context_id, size - 2, last=last)

    async def _pdata_whole(self, body: memoryview) -> None:
        """Every PDV item of one P-DATA-TF read whole: fragments are slices of it, no read
        (nor copy) per item."""
        view = body
        at, end = 0, len(body)
        while at < end:
            if end - at < pdus.ITEM.size:
                raise ProtocolError("truncated PDV item", pdus.ABORT_INVALID_PARAMETER)
            size, context_id, control = pdus.ITEM.unpack_from(body, at)
            if size < 2 or size + 4 > end - at:
                raise ProtocolError("PDV item length invalid", pdus.ABORT_INVALID_PARAMETER)
            if context_id not in self.contexts:
                raise ProtocolError(f"PDV on presentation context {context_id}, not accepted")
            fragment = view[at + pdus.ITEM.size : at + 4 + size]
            at += 4 + size
            last = bool(control & pdus.LAST)
            if control & pdus.COMMAND:
                await self._command_fragment(context_id, fragment, last=last)
            else:
                await self._dataset_fragment(context_id, len(fragment), last=last, data=fragment)

    async def _command_fragment(self, context_id: int, fragment: memoryview, *, last: bool) -> None:
        if self.pending is not None:
            raise ProtocolError("command fragment while a data set is arriving")
        if len(self.command) + len(fragment) > dimse.MAX_COMMAND_BYTES:
            raise ProtocolError("command set too long", pdus.ABORT_INVALID_PARAMETER)
        self.command += fragment
        if last:
            raw, self.command = bytes(self.command), bytearray()
            try:
                command = Command.decode(raw)
            except ValueError as exc:
                raise ProtocolError(str(exc), pdus.ABORT_INVALID_PARAMETER) from exc
            await self._on_command(context_id, command)

    async def _on_command(self, context_id: int, cmd: Command) -> None:
        if cmd.field == dimse.C_STORE_RQ:
            self.pending = self._start_store(context_id, cmd)
        elif cmd.is_response:  # to a request of ours (N-EVENT-REPORT): nothing to answer
            if cmd.has_dataset:
                self.pending = Pending(cmd, context_id, None, answer=False)
        elif self._commitment_request(context_id, cmd):
            self.pending = Pending(cmd, context_id, None, buffer=bytearray())
        elif cmd.has_dataset:  # an operation we do not provide: read its data set, then say so
            self.pending = Pending(cmd, context_id, None, dimse.UNRECOGNISED_OPERATION)
        elif cmd.field == dimse.C_ECHO_RQ:
            await self._respond(context_id, cmd, dimse.SUCCESS)
        else:
            await self._respond(context_id, cmd, dimse.UNRECOGNISED_OPERATION)

    def _commitment_request(self, context_id: int, cmd: Command) -> bool:
        """An N-ACTION on the context of the SOP class it names (Storage Commitment)."""
        cx = str(self.contexts[context_id].abstract_syntax)
        return (
            cmd.field == dimse.N_ACTION_RQ
            and cmd.has_dataset
            and self.on_action is not None
            and cmd.requested_sop_class_uid == cx
        )

    def _start_store(self, context_id: int, cmd: Command) -> Pending:
        cx = self.contexts[context_id]
        problem = cmd.store_problem(str(cx.abstract_syntax))
        if problem is not None:
            self._log("C-STORE refused", error=problem, sop_instance_uid=cmd.sop_instance_uid)
            mismatch = cmd.sop_class_uid != str(cx.abstract_syntax)
            status = dimse.SOP_CLASS_NOT_SUPPORTED if mismatch else dimse.CANNOT_UNDERSTAND
            if not cmd.has_dataset:
                raise ProtocolError(problem, pdus.ABORT_INVALID_PARAMETER)
            return Pending(cmd, context_id, None, status)
        if self.limits.min_free_bytes and (
            shutil.disk_usage(self.root).free < self.limits.min_free_bytes
        ):  # checked per instance: the disk may fill during a long association
            self._log("C-STORE refused: staging disk low", sop_instance_uid=cmd.sop_instance_uid)
            return Pending(cmd, context_id, None, dimse.OUT_OF_RESOURCES)
        meta = dimse.file_meta(cmd, str(cx.transfer_syntax[0]), self.peer.calling_ae)
        try:
            return Pending(cmd, context_id, StagingFile(self.root, meta, self.files))
        except OSError as exc:
            self._log("cannot open staging file", error=repr(exc))
            return Pending(cmd, context_id, None, dimse.OUT_OF_RESOURCES)

    async def _dataset_fragment(
        self, context_id: int, size: int, *, last: bool, data: memoryview | None = None
    ) -> None:
        """`size` bytes of a data set: `data` when the PDU was read whole, else read here."""
        pending = self.pending
        if pending is None or pending.context_id != context_id:
            raise ProtocolError("data set fragment without its command")
        while size:
            chunk = data if data is not None else await self._read(min(size, CHUNK))
            size -= len(chunk)
            if pending.buffer is not None:
                pending.buffer += chunk
                if len(pending.buffer) > MAX_ACTION_BYTES:
                    raise ProtocolError("N-ACTION data set too long", pdus.ABORT_INVALID_PARAMETER)
                continue
            if pending.file is not None:
                cap = self.limits.max_instance_bytes
                if cap and pending.file.size + len(chunk) > cap:  # the rest is read, dropped
                    self._log("C-STORE refused: instance over the size cap", limit_bytes=cap)
                    pending.file.discard()
                    pending.file, pending.status = None, dimse.OUT_OF_RESOURCES
                    continue
                # Written with the next flush: before a read that moves the buffer (`_read`)
                # or once the data set is complete.
                self._write(pending, chunk)
        if last:
            self.pending = None
            self._flush(pending)
            status = pending.status
            if pending.buffer is not None and self.on_action is not None:
                syntax = str(self.contexts[context_id].transfer_syntax[0])
                rsp = self.on_action(
                    self, context_id, syntax, pending.command, bytes(pending.buffer)
                )
                self.writer.write(pdus.command_pdu(context_id, rsp))
                await self.writer.drain()
                return
            if pending.file is not None:
                status = await self.store(self.peer, pending.file)
            if pending.answer:
                await self._respond(context_id, pending.command, status)

    def _write(self, pending: Pending, chunk: memoryview) -> None:
        assert pending.file is not None
        try:
            pending.file.queue(chunk)
        except OSError as exc:  # disk full and the like: answer, keep the association
            self._write_failed(pending, exc)

    def _flush(self, pending: Pending) -> None:
        if pending.file is not None:
            try:
                pending.file.flush()
            except OSError as exc:
                self._write_failed(pending, exc)

    def _write_failed(self, pending: Pending, exc: OSError) -> None:
        self._log("cannot write instance", error=repr(exc))
        assert pending.file is not None
        pending.file.discard()
        pending.file, pending.status = None, dimse.OUT_OF_RESOURCES

    async def _respond(self, context_id: int, cmd: Command, status: int) -> None:
        self.writer.write(pdus.command_pdu(context_id, dimse.response(cmd, status)))
        await self.writer.drain()

    # -- requests of ours (the storage commitment report) ----------------------------------

    @property
    def calling_ae(self) -> str:
        return self.peer.calling_ae

    def may_report(self, context_id: int) -> bool:
        """Still open, and the peer accepted us as the SCU of this context (role selection)."""
        cx = self.contexts.get(context_id)
        return self.established and not self.writer.is_closing() and bool(cx and cx.as_scu)

    def next_message_id(self) -> int:
        self.message_id = self.message_id % 0xFFFF + 1
        return self.message_id

    async def send_request(self, context_id: int, command: bytes, dataset: bytes) -> None:
        """One whole message in one write (never interleaved with a response of ours)."""
        self.writer.write(pdus.message_pdus(context_id, command, dataset, self.peer_max_pdu))
        await self.writer.drain()

    # -- bytes -----------------------------------------------------------------------------

    async def _header(self) -> tuple[int, int]:
        kind, length = pdus.HEADER.unpack(await self._read(pdus.HEADER.size))
        if self.limits.max_pdu and kind == pdus.P_DATA_TF and length > self.limits.max_pdu:
            raise ProtocolError("P-DATA-TF larger than the maximum we accepted", 0x06)
        return int(kind), int(length)

    async def _read(self, n: int) -> memoryview:
        """`n` bytes from the peer, valid until the next read; the watchdog of
        `_transfer_watched` bounds the wait."""
        if self.pending is not None and self.reader.buffered() < n:
            # This read moves the buffer's unread bytes to its front: the fragments queued
            # for the staging file are views of that buffer, so they are written first.
            self._flush(self.pending)
        loop = asyncio.get_running_loop()
        self._progress, self._reading = loop.time(), True
        try:
            return await self.reader.readexactly(n)
        finally:
            self._progress, self._reading = loop.time(), False

    def _log(self, message: str, **fields: object) -> None:
        log.warning(message, correlation_id=self.peer.assoc_id, origin=self.peer.origin, **fields)
