"""Storage Commitment Push Model, SCP side (PS3.4 annex J).

A modality sends an N-ACTION-RQ (Action Type 1: a Transaction UID and the instances it wants
us to take responsibility for); we answer the N-ACTION-RSP at once, then look each instance
up in the index: it is committed only when durably stored and indexed. While files from the
same modality are still pending in the ledger we wait, up to `commitment_wait_seconds`; what
is still not there is reported failed with a reason. The N-EVENT-REPORT-RQ (Event Type 1: all
committed, 2: some failed) goes on the same association if it is still open and the modality
accepted to be its SCP (role selection), else on a new association to the modality's
configured address, through `libs.dicom_net`'s client (the SCU side is not on the hot
path): bounded in time, aborted when the service stops.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dsutils import decode, encode

from libs.db.commitment import State
from libs.dicom_net.client import DicomClient
from libs.dicom_net.models import Peer
from libs.dicom_net.transport import MIN_PDU_LIMIT
from libs.runtime.logging import get_logger
from services.dicom_receiver import dimse
from services.dicom_receiver.dimse import Command

log = get_logger(__name__)

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model SOP Class
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # its well-known SOP Instance
N_ACTION_RSP = 0x8130
N_EVENT_REPORT_RQ = 0x0100
DATASET_PRESENT = 0x0000


# N-ACTION statuses (PS3.7 annex C) and Failure Reasons (PS3.4 J.3.2.1.1.1.2)
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT = 0x0112
MISSING_ATTRIBUTE = 0x0120
NO_SUCH_ACTION = 0x0123
INVALID_OBJECT_INSTANCE = 0x0117
CLASS_INSTANCE_CONFLICT = 0x0119
RESOURCE_LIMITATION = 0x0213
REPORT_MAX_PDU = MIN_PDU_LIMIT  # a report's new association only reads its N-EVENT-REPORT-RSP
REPORT_SECONDS = 30.0  # a report on a new association: each DIMSE step, and in all
MAX_REPORTS = 64  # requests being resolved at once; more are refused (the modality retries)
REASONS: dict[State, int] = {
    "missing": NO_SUCH_OBJECT,
    "failed": PROCESSING_FAILURE,
    "pending": PROCESSING_FAILURE,  # not indexed within the bound
    "class_conflict": CLASS_INSTANCE_CONFLICT,
}

Lookup = Callable[[str, Sequence[tuple[str, str]]], Awaitable[dict[str, State]]]


@dataclass(frozen=True)
class Request:
    transaction_uid: str
    references: list[tuple[str, str]]  # (SOP Class UID, SOP Instance UID)


@dataclass(frozen=True)
class Outcome:
    transaction_uid: str
    committed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # class, instance, reason

    @property
    def event_type(self) -> int:
        return 2 if self.failed else 1


class Channel(Protocol):
    """The association the N-ACTION came on, as the reporter sees it."""

    @property
    def calling_ae(self) -> str: ...

    def may_report(self, context_id: int) -> bool: ...

    async def send_request(self, context_id: int, command: bytes, dataset: bytes) -> None: ...

    def next_message_id(self) -> int: ...


def command_set(ds: Dataset) -> bytes:
    """An Implicit VR Little Endian command set, group length first (PS3.7 6.3.1)."""
    body = encode(ds, True, True)
    assert body is not None
    return dimse.IMPLICIT.pack(0x0000, 0x0000, 4) + struct.pack("<L", len(body)) + body


def action_response(cmd: Command, status: int) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = cmd.requested_sop_class_uid or STORAGE_COMMITMENT
    ds.CommandField = N_ACTION_RSP
    ds.MessageIDBeingRespondedTo = cmd.message_id
    ds.CommandDataSetType = dimse.NO_DATASET
    ds.Status = status
    if cmd.requested_sop_instance_uid:
        ds.AffectedSOPInstanceUID = cmd.requested_sop_instance_uid
    if status == dimse.SUCCESS:
        ds.ActionTypeID = cmd.action_type
    return command_set(ds)


def parse_action(cmd: Command, data: bytes, transfer_syntax: str) -> Request | int:
    """The commitment request, or the N-ACTION status that refuses it."""
    if cmd.requested_sop_class_uid != STORAGE_COMMITMENT:
        return dimse.SOP_CLASS_NOT_SUPPORTED
    if cmd.requested_sop_instance_uid != WELL_KNOWN_INSTANCE:
        return INVALID_OBJECT_INSTANCE
    if cmd.action_type != 1:
        return NO_SUCH_ACTION
    syntax = UID(transfer_syntax)
    try:
        ds = decode(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)
        uid = str(ds.get("TransactionUID", "") or "")
        refs = [
            (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
            for item in ds.get("ReferencedSOPSequence", None) or []
        ]
    except Exception as exc:  # whatever the bytes make pydicom raise
        log.warning("unreadable storage commitment request", error=repr(exc))
        return PROCESSING_FAILURE
    if not uid or not refs or not all(c and i for c, i in refs):
        return MISSING_ATTRIBUTE
    return Request(uid, refs)


def event_dataset(outcome: Outcome) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = outcome.transaction_uid
    if outcome.committed:
        ds.ReferencedSOPSequence = [_item(c, i) for c, i in outcome.committed]
    if outcome.failed:
        ds.FailedSOPSequence = [_item(c, i, reason) for c, i, reason in outcome.failed]
    return ds


def _item(sop_class: str, sop_instance: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if reason is not None:
        item.FailureReason = reason
    return item


def event_command(message_id: int, event_type: int) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = STORAGE_COMMITMENT
    ds.CommandField = N_EVENT_REPORT_RQ
    ds.MessageID = message_id
    ds.CommandDataSetType = DATASET_PRESENT
    ds.AffectedSOPInstanceUID = WELL_KNOWN_INSTANCE
    ds.EventTypeID = event_type
    return command_set(ds)


async def resolve(
    lookup: Lookup, source: str, request: Request, *, wait_seconds: float, poll_seconds: float
) -> Outcome:
    """Ask the index until nothing is pending or the bound is reached."""
    deadline = time.monotonic() + wait_seconds
    while True:
        states = await lookup(source, request.references)
        pending = any(states.get(i) == "pending" for _, i in request.references)
        if not pending or time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(poll_seconds, max(deadline - time.monotonic(), 0)))
    outcome = Outcome(request.transaction_uid)
    for sop_class, sop_instance in request.references:
        state = states.get(sop_instance, "missing")
        if state == "committed":
            outcome.committed.append((sop_class, sop_instance))
        else:
            outcome.failed.append((sop_class, sop_instance, REASONS[state]))
    return outcome


@dataclass(frozen=True)
class Address:
    host: str
    port: int


class CommitmentSCP:
    def __init__(
        self,
        *,
        ae_title: str,
        lookup: Lookup,
        peers: dict[str, Address],
        wait_seconds: float,
        poll_seconds: float,
    ) -> None:
        self.ae_title = ae_title
        self.lookup = lookup
        self.peers = peers
        self.wait_seconds = wait_seconds
        self.poll_seconds = poll_seconds
        self.reports: set[asyncio.Task[None]] = set()

    def on_action(
        self, channel: Channel, context_id: int, transfer_syntax: str, cmd: Command, data: bytes
    ) -> bytes:
        """The N-ACTION-RSP to send now; the event report follows from a task of its own."""
        request = parse_action(cmd, data, transfer_syntax)
        if not isinstance(request, int) and len(self.reports) >= MAX_REPORTS:
            request = RESOURCE_LIMITATION
        if isinstance(request, int):
            log.warning("storage commitment refused", calling_ae=channel.calling_ae, status=request)
            return action_response(cmd, request)
        log.info(
            "storage commitment requested",
            calling_ae=channel.calling_ae,
            transaction_uid=request.transaction_uid,
            instances=len(request.references),
        )
        task = asyncio.create_task(self._report(channel, context_id, transfer_syntax, request))
        self.reports.add(task)
        task.add_done_callback(self.reports.discard)
        return action_response(cmd, dimse.SUCCESS)

    async def _report(
        self, channel: Channel, context_id: int, transfer_syntax: str, request: Request
    ) -> None:
        try:
            outcome = await resolve(
                self.lookup,
                f"dicom:{channel.calling_ae}",
                request,
                wait_seconds=self.wait_seconds,
                poll_seconds=self.poll_seconds,
            )
            ds = event_dataset(outcome)
            how = "same association"
            if channel.may_report(context_id):
                syntax = UID(transfer_syntax)
                data = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian)
                assert data is not None
                command = event_command(channel.next_message_id(), outcome.event_type)
                await channel.send_request(context_id, command, data)
            else:
                how = "new association"
                await self._send_new(channel.calling_ae, ds, outcome.event_type)
            log.info(
                "storage commitment reported",
                calling_ae=channel.calling_ae,
                transaction_uid=request.transaction_uid,
                committed=len(outcome.committed),
                failed=len(outcome.failed),
                on=how,
            )
        except Exception as exc:  # the modality asks again when no report comes
            log.error(
                "storage commitment not reported",
                calling_ae=channel.calling_ae,
                transaction_uid=request.transaction_uid,
                error=repr(exc),
            )

    async def _send_new(self, calling_ae: str, ds: Dataset, event_type: int) -> None:
        """On a new association to the modality, within REPORT_SECONDS (cancelled with the
        service's stop: the association is aborted, its thread ends)."""
        address = self.peers.get(calling_ae)
        if address is None:
            raise LookupError(f"no address configured for {calling_ae} (RECEIVER_COMMITMENT_PEERS)")
        client = DicomClient(
            Peer(ae_title=calling_ae, host=address.host, port=address.port),
            calling_ae=self.ae_title,
            max_pdu=REPORT_MAX_PDU,
            timeout=REPORT_SECONDS,
            connect_timeout=REPORT_SECONDS / 3,
        )
        await client.report_commitment(ds, event_type)

    async def stop(self) -> None:
        for task in list(self.reports):
            task.cancel()
        await asyncio.gather(*self.reports, return_exceptions=True)


def parse_peers(entries: Sequence[str]) -> dict[str, Address]:
    """`AE=host:port` entries (RECEIVER_COMMITMENT_PEERS)."""
    out: dict[str, Address] = {}
    for entry in entries:
        ae, sep, where = entry.partition("=")
        host, colon, port = where.strip().rpartition(":")
        if not sep or not colon or not ae.strip() or not host or not port.isdigit():
            raise ValueError(f"{entry!r}: expected AE=host:port")
        out[ae.strip()] = Address(host.strip("[]"), int(port))
    return out
