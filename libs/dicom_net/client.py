"""`DicomClient`: C-ECHO, C-STORE (`storing`), C-FIND (Q/R and Modality Worklist), C-GET (to
a folder or to memory), C-MOVE and Storage Commitment (N-ACTION, then the N-EVENT-REPORT)
over pynetdicom, from asyncio.

Each call runs its association in a worker thread (pynetdicom blocks), so the event loop
never waits on the network. Per call: a timeout (the association is aborted when it
expires), bounded retries when the association cannot be established (refused
connection, transient rejection), progress callbacks for C-GET/C-MOVE, and cancellation
(cancelling the awaiting task aborts the association).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from libs.dicom_net.commitment import (
    STORAGE_COMMITMENT,
    WELL_KNOWN_INSTANCE,
    CommitmentResult,
    SopReference,
    request_dataset,
)
from libs.dicom_net.errors import (
    AssociationAborted,
    AssociationRejected,
    ConnectionFailed,
    DicomNetError,
    DicomTimeout,
    FailureStatus,
    RetrieveTooLarge,
)
from libs.dicom_net.models import Level, Match, Peer, Progress, Query, RetrieveResult, Root
from libs.dicom_net.store import NotAccepted, StoreSession
from libs.dicom_net.tls import DicomTls
from libs.dicom_net.transport import (
    NODELAY_HANDLERS,
    TRANSFER_SYNTAXES,
    UNCOMPRESSED,
    Associated,
    bound_pdus,
    in_thread,
)
from libs.dicom_net.worklist import WorklistItem, WorklistQuery

T = TypeVar("T")
log = logging.getLogger(__name__)
OnProgress = Callable[[Progress], None]
MODELS = {
    ("find", Root.PATIENT): PatientRootQueryRetrieveInformationModelFind,
    ("find", Root.STUDY): StudyRootQueryRetrieveInformationModelFind,
    ("get", Root.PATIENT): PatientRootQueryRetrieveInformationModelGet,
    ("get", Root.STUDY): StudyRootQueryRetrieveInformationModelGet,
    ("move", Root.PATIENT): PatientRootQueryRetrieveInformationModelMove,
    ("move", Root.STUDY): StudyRootQueryRetrieveInformationModelMove,
}
# C-GET: storage classes we take the SCP role for (an association carries at most 128).
GET_STORAGE = [str(cx.abstract_syntax) for cx in StoragePresentationContexts[:120]]
PENDING = (0xFF00, 0xFF01)
# The largest PDU we accept: peers cut their data into PDUs of at most this (announced in the
# association), and a longer one is refused with an A-ABORT before it is read.
DEFAULT_MAX_PDU = 1 << 20


class Cancelled(DicomNetError):
    """The call was cancelled; the association was aborted."""


@dataclass(frozen=True)
class InMemory:
    """A C-GET to memory: the final counters and the data sets received (file meta set)."""

    result: RetrieveResult
    datasets: list[Dataset]
    size: int  # encoded bytes received


class DicomClient:
    def __init__(
        self,
        peer: Peer,
        *,
        calling_ae: str = "DICOMFLOW",
        max_pdu: int = DEFAULT_MAX_PDU,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        retries: int = 2,
        retry_backoff: float = 0.5,
        tls: DicomTls | None = None,
    ) -> None:
        self.peer = peer
        # Built once: an unreadable CA or key file fails here, at start, not on a poll.
        self._tls_args = (tls.client_context(), peer.host) if tls is not None else None
        self.calling_ae = calling_ae
        if max_pdu <= 0:
            raise ValueError("max_pdu must be positive: an unbounded PDU is a memory hazard")
        self.max_pdu = max_pdu
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.retry_backoff = retry_backoff

    # -- public calls ----------------------------------------------------------------------

    async def echo(self, *, time_limit: float | None = None) -> None:
        def run(cancel: threading.Event) -> None:
            with self._association([(Verification, UNCOMPRESSED)], cancel) as assoc:
                status = assoc.send_c_echo()
                _check("C-ECHO", assoc, status)

        await self._call(run, time_limit)

    async def find(self, query: Query, *, time_limit: float | None = None) -> list[Match]:
        model = MODELS["find", query.root]

        def run(cancel: threading.Event) -> list[Match]:
            matches = []
            with self._association([(model, UNCOMPRESSED)], cancel) as assoc:
                for status, identifier in assoc.send_c_find(query.identifier(), model):
                    _check("C-FIND", assoc, status, cancel)
                    if status.Status in PENDING and identifier is not None:
                        matches.append(Match.from_dataset(query.level, identifier))
            return matches

        return await self._call(run, time_limit)

    async def move(
        self,
        query: Query,
        destination: str,
        *,
        progress: OnProgress | None = None,
        time_limit: float | None = None,
    ) -> RetrieveResult:
        model = MODELS["move", query.root]

        def run(cancel: threading.Event) -> RetrieveResult:
            with self._association([(model, UNCOMPRESSED)], cancel) as assoc:
                responses = assoc.send_c_move(query.retrieve_identifier(), destination, model)
                return _retrieve("C-MOVE", assoc, responses, cancel, progress)

        return await self._call(run, time_limit)

    async def get(
        self,
        query: Query,
        folder: Path,
        *,
        progress: OnProgress | None = None,
        time_limit: float | None = None,
    ) -> RetrieveResult:
        """Retrieve into `folder` as `<SOPInstanceUID-free name>.dcm`, the bytes as sent."""
        model = MODELS["get", query.root]
        folder.mkdir(parents=True, exist_ok=True)
        contexts = [(model, UNCOMPRESSED), *[(uid, TRANSFER_SYNTAXES) for uid in GET_STORAGE]]

        def run(cancel: threading.Event) -> RetrieveResult:
            written: list[str] = []

            def on_store(event: Any) -> int:
                if cancel.is_set():
                    return 0xFE00
                path = folder / f"{uuid.uuid4().hex}.dcm"
                with path.open("wb") as f, event.request.DataSet.getbuffer() as data:
                    f.write(b"\x00" * 128 + b"DICM" + encode_file_meta(event.file_meta))
                    f.write(data)
                written.append(str(path))
                return 0x0000

            roles = [build_role(uid, scp_role=True) for uid in GET_STORAGE]
            handlers = [(evt.EVT_C_STORE, on_store)]
            with self._association(contexts, cancel, roles, handlers) as assoc:
                responses = assoc.send_c_get(query.retrieve_identifier(), model)
                result = _retrieve("C-GET", assoc, responses, cancel, progress)
            return result.model_copy(update={"files": written})

        return await self._call(run, time_limit)

    async def get_to_memory(
        self,
        query: Query,
        *,
        max_bytes: int,
        progress: OnProgress | None = None,
        time_limit: float | None = None,
    ) -> InMemory:
        """C-GET, keeping the data sets in memory; past `max_bytes` of encoded data set the
        association is aborted and `RetrieveTooLarge` raised (nothing is half-returned)."""
        model = MODELS["get", query.root]
        contexts = [(model, UNCOMPRESSED), *[(uid, TRANSFER_SYNTAXES) for uid in GET_STORAGE]]

        def run(cancel: threading.Event) -> InMemory:
            datasets: list[Dataset] = []
            size = [0]
            over = threading.Event()

            def on_store(event: Any) -> int:
                if cancel.is_set():
                    return 0xA700
                with event.request.DataSet.getbuffer() as data:
                    size[0] += data.nbytes
                if size[0] > max_bytes:
                    over.set()
                    cancel.set()  # aborts the association: the peer stops sending
                    return 0xA700
                ds = event.dataset
                ds.file_meta = event.file_meta
                datasets.append(ds)
                return 0x0000

            roles = [build_role(uid, scp_role=True) for uid in GET_STORAGE]
            handlers = [(evt.EVT_C_STORE, on_store)]
            try:
                with self._association(contexts, cancel, roles, handlers) as assoc:
                    responses = assoc.send_c_get(query.retrieve_identifier(), model)
                    result = _retrieve("C-GET", assoc, responses, cancel, progress)
            except DicomNetError:
                if over.is_set():
                    raise RetrieveTooLarge(max_bytes) from None
                raise
            if over.is_set():
                raise RetrieveTooLarge(max_bytes)
            return InMemory(result, datasets, size[0])

        return await self._call(run, time_limit)

    async def find_worklist(
        self, query: WorklistQuery, *, time_limit: float | None = None
    ) -> list[WorklistItem]:
        """Modality Worklist C-FIND: the scheduled procedure steps matching `query`."""
        model = ModalityWorklistInformationFind

        def run(cancel: threading.Event) -> list[WorklistItem]:
            items = []
            with self._association([(model, UNCOMPRESSED)], cancel) as assoc:
                for status, identifier in assoc.send_c_find(query.identifier(), model):
                    _check("C-FIND", assoc, status, cancel)
                    if status.Status in PENDING and identifier is not None:
                        items.append(WorklistItem.from_dataset(identifier))
            return items

        return await self._call(run, time_limit)

    async def request_commitment(
        self,
        references: Sequence[SopReference],
        *,
        transaction_uid: str | None = None,
        time_limit: float | None = None,
    ) -> CommitmentResult:
        """Storage Commitment Push Model: N-ACTION, then wait (within the time limit) for the
        N-EVENT-REPORT of this transaction on the same association (we propose the SCP role
        for it). A peer that reports on a new association instead is not listened for: the
        call then ends in `DicomTimeout`."""
        uid = transaction_uid or str(generate_uid())
        request = request_dataset(uid, list(references))

        def run(cancel: threading.Event) -> CommitmentResult:
            reports: queue.Queue[tuple[int, Dataset, threading.Thread]] = queue.Queue()

            def on_report(event: Any) -> tuple[int, None]:
                # pynetdicom serves an N-EVENT-REPORT in a thread of its own, which sends
                # the answer after this returns.
                info = (int(event.request.EventTypeID), event.event_information)
                reports.put((*info, threading.current_thread()))
                return 0x0000, None

            roles = [build_role(STORAGE_COMMITMENT, scu_role=True, scp_role=True)]
            handlers = [(evt.EVT_N_EVENT_REPORT, on_report)]
            contexts: list[tuple[Any, list[str]]] = [(STORAGE_COMMITMENT, UNCOMPRESSED[:2])]
            with self._association(contexts, cancel, roles, handlers) as assoc:
                status, _ = assoc.send_n_action(request, 1, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE)
                _check("N-ACTION", assoc, status, cancel)
                while True:
                    try:
                        event_type, ds, serving = reports.get(timeout=0.05)
                    except queue.Empty:
                        if cancel.is_set():
                            raise Cancelled("storage commitment cancelled") from None
                        if not assoc.is_established:
                            raise AssociationAborted("ended before the report") from None
                        continue
                    if str(ds.get("TransactionUID", "")) == uid:
                        # Our answer first: a release overtaking it leaves the peer without
                        # it (it then fails in the DUL, past Sta6).
                        serving.join(self.timeout)
                        return CommitmentResult.from_report(event_type, ds)

        return await self._call(run, time_limit)

    async def report_commitment(
        self, report: Dataset, event_type: int, *, time_limit: float | None = None
    ) -> None:
        """Storage Commitment Push Model, SCP side: the N-EVENT-REPORT of a transaction
        (`event_type` 1: all committed, 2: some failed) on a new association to the modality
        that asked for it, with us in the SCP role for the class (PS3.4 J.3.3)."""

        def run(cancel: threading.Event) -> None:
            roles = [build_role(STORAGE_COMMITMENT, scp_role=True)]
            contexts: list[tuple[Any, list[str]]] = [(STORAGE_COMMITMENT, UNCOMPRESSED[:2])]
            with self._association(contexts, cancel, roles) as assoc:
                status, _ = assoc.send_n_event_report(
                    report, event_type, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE
                )
                _check("N-EVENT-REPORT", assoc, status, cancel)

        await self._call(run, time_limit)

    def storing(self, contexts: Sequence[tuple[str, str]]) -> StoreSession:
        """C-STORE: `async with client.storing([(sop_class, syntax), ...]) as session:` opens
        one association proposing each pair; `await session.send(path, sop_class, syntax)`
        sends one file as stored (`libs.dicom_net.store`)."""
        return StoreSession(
            contexts,
            open_association=self._association,
            timeout=self.timeout,
            peer=self.peer.ae_title,
        )

    # -- plumbing --------------------------------------------------------------------------

    async def _call(self, run: Callable[[threading.Event], T], time_limit: float | None) -> T:
        """Run `run` in a thread; on timeout or cancellation abort its association."""
        cancel = threading.Event()
        future = in_thread(run, cancel)
        try:
            return await asyncio.wait_for(asyncio.shield(future), time_limit or self.timeout)
        except TimeoutError:
            cancel.set()
            await asyncio.gather(future, return_exceptions=True)
            raise DicomTimeout(f"no answer from {self.peer.ae_title} in time") from None
        except asyncio.CancelledError:
            cancel.set()
            raise

    def _association(
        self,
        contexts: list[tuple[Any, list[str]]],
        cancel: threading.Event,
        roles: list[Any] | None = None,
        handlers: list[Any] | None = None,
    ) -> Associated:
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = self.connect_timeout
        ae.connection_timeout = self.connect_timeout
        ae.dimse_timeout = self.timeout
        ae.network_timeout = self.timeout
        ae.maximum_pdu_size = self.max_pdu
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, syntaxes)
        attempt = 0
        while True:
            opened = threading.Event()
            assoc = ae.associate(
                self.peer.host,
                self.peer.port,
                ae_title=self.peer.ae_title,
                max_pdu=self.max_pdu,
                ext_neg=roles,
                tls_args=self._tls_args,
                evt_handlers=[
                    *NODELAY_HANDLERS,
                    (evt.EVT_CONN_OPEN, bound_pdus(self.max_pdu)),
                    (evt.EVT_CONN_OPEN, _flag(opened)),
                    *(handlers or []),
                ],
            )
            if assoc.is_established:
                return Associated(assoc, cancel, self.peer.ae_title)
            error = _why_not(assoc, self.peer, connected=opened.is_set())
            retriable = isinstance(error, ConnectionFailed) or (
                isinstance(error, AssociationRejected) and error.transient
            )
            if not retriable or attempt >= self.retries or cancel.is_set():
                raise error
            attempt += 1
            time.sleep(self.retry_backoff * 2 ** (attempt - 1))


def _flag(event: threading.Event) -> Callable[[Any], None]:
    return lambda _: event.set()


def _why_not(assoc: Any, peer: Peer, *, connected: bool) -> DicomNetError:
    if not connected:
        return ConnectionFailed(f"cannot reach {peer.ae_title} at {peer.host}:{peer.port}")
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        return AssociationRejected(
            rj.result_str, rj.source_str, rj.reason_str, transient=rj.result == 0x02
        )
    if assoc.is_aborted:
        return AssociationAborted(f"{peer.ae_title} aborted the association request")
    return ConnectionFailed(f"{peer.ae_title} closed the connection during association")


def _check(op: str, assoc: Any, status: Dataset, cancel: threading.Event | None = None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{op} cancelled")
    if not status:  # pynetdicom's empty Dataset: no valid response
        if assoc.is_aborted:
            raise AssociationAborted(f"{op}: association aborted")
        raise DicomTimeout(f"{op}: no response (DIMSE timeout or connection lost)")
    code = int(status.Status)
    if code not in (0x0000, *PENDING) and not 0xB000 <= code <= 0xBFFF:
        raise FailureStatus(op, code)


def _retrieve(
    op: str,
    assoc: Any,
    responses: Iterator[tuple[Dataset, Dataset | None]],
    cancel: threading.Event,
    progress: OnProgress | None,
) -> RetrieveResult:
    final = RetrieveResult(status=0xFFFF)
    for status, identifier in responses:
        if not status:
            _check(op, assoc, status, cancel)
        code = int(status.Status)
        counts = Progress(
            completed=int(status.get("NumberOfCompletedSuboperations", 0) or 0),
            remaining=status.get("NumberOfRemainingSuboperations"),
            failed=int(status.get("NumberOfFailedSuboperations", 0) or 0),
            warning=int(status.get("NumberOfWarningSuboperations", 0) or 0),
        )
        if code in PENDING:
            if progress is not None:
                progress(counts)
            if cancel.is_set():
                raise Cancelled(f"{op} cancelled")
            continue
        failed_uids = identifier.get("FailedSOPInstanceUIDList", []) if identifier else []
        final = RetrieveResult(
            status=code,
            completed=counts.completed,
            failed=counts.failed,
            warning=counts.warning,
            failed_sop_instance_uids=[failed_uids]
            if isinstance(failed_uids, str)
            else [str(u) for u in failed_uids],
        )
        if code not in (0x0000,) and not 0xB000 <= code <= 0xBFFF:
            raise FailureStatus(op, code)
    if final.status == 0xFFFF:
        _check(op, assoc, Dataset(), cancel)
    if progress is not None:
        progress(
            Progress(
                completed=final.completed, remaining=0, failed=final.failed, warning=final.warning
            )
        )
    return final


__all__ = [
    "Cancelled",
    "CommitmentResult",
    "DicomClient",
    "InMemory",
    "Level",
    "Match",
    "NotAccepted",
    "Peer",
    "Query",
    "RetrieveResult",
    "SopReference",
    "StoreSession",
    "WorklistItem",
    "WorklistQuery",
]
