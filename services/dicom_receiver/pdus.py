"""The DICOM upper layer PDUs the receiver reads and writes (PS3.8 section 9.3).

The association negotiation PDUs are decoded and encoded by pynetdicom (`A_ASSOCIATE_RQ`,
`A_ASSOCIATE_AC`, `negotiate_as_acceptor`); the fixed-size ones and the P-DATA-TF framing
are a few bytes each and are packed here, so the per-instance path allocates nothing big.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

# PDU types, PS3.8 Table 9-11
ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07

HEADER = struct.Struct(">BxL")  # type, reserved, length
ITEM = struct.Struct(">LBB")  # PDV item length, presentation context id, message control
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# A-ABORT source 2 (service provider) reasons, PS3.8 Table 9-26
ABORT_UNRECOGNISED_PDU = 0x01
ABORT_UNEXPECTED_PDU = 0x02
ABORT_INVALID_PARAMETER = 0x06

# Message control header bits, PS3.8 E.2
COMMAND = 0x01
LAST = 0x02


class ProtocolError(Exception):
    """The peer broke the protocol: we abort the association with `reason`."""

    def __init__(self, message: str, reason: int = ABORT_UNEXPECTED_PDU) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class AssociateRequest:
    calling_ae: str
    called_ae: str
    application_context: str
    contexts: list[PresentationContext]
    roles: dict[UID, tuple[bool | None, bool | None]]
    max_pdu: int  # the largest PDU the requestor accepts (0 = unlimited)

    @classmethod
    def decode(cls, body: bytes) -> AssociateRequest:
        pdu = A_ASSOCIATE_RQ()
        try:
            pdu.decode(HEADER.pack(ASSOCIATE_RQ, len(body)) + body)
            primitive = pdu.to_primitive()
        except Exception as exc:  # pynetdicom raises what the bytes make it raise
            raise ProtocolError(f"undecodable A-ASSOCIATE-RQ: {exc!r}", 0x06) from exc
        roles: dict[UID, tuple[bool | None, bool | None]] = {}
        max_pdu = 0
        for item in primitive.user_information:
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid:
                roles[item.sop_class_uid] = (item.scu_role, item.scp_role)
            elif isinstance(item, MaximumLengthNotification):
                max_pdu = int(item.maximum_length_received or 0)
        return cls(
            calling_ae=str(primitive.calling_ae_title).strip(),
            called_ae=str(primitive.called_ae_title).strip(),
            application_context=str(primitive.application_context_name or ""),
            contexts=list(primitive.presentation_context_definition_list),
            roles=roles,
            max_pdu=max_pdu,
        )


def negotiate(
    rq: AssociateRequest, supported: list[PresentationContext], max_pdu: int
) -> tuple[bytes, dict[int, PresentationContext]]:
    """The A-ASSOCIATE-AC PDU and the accepted contexts by id (PS3.8 9.3.3)."""
    results, roles = negotiate_as_acceptor(rq.contexts, supported, rq.roles or None)
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(APPLICATION_CONTEXT)
    primitive.calling_ae_title = rq.calling_ae
    primitive.called_ae_title = rq.called_ae
    primitive.result = 0x00
    primitive.result_source = 0x01
    primitive.presentation_context_definition_results_list = results
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    impl_version = ImplementationVersionNameNotification()
    impl_version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    user_information: list[Any] = [length, impl_uid, impl_version, *roles]
    primitive.user_information = user_information
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)
    accepted = {int(cx.context_id): cx for cx in results if cx.result == 0x00}  # type: ignore[arg-type]
    return pdu.encode(), accepted


def reject(result: int, source: int, diagnostic: int) -> bytes:
    return HEADER.pack(ASSOCIATE_RJ, 4) + bytes((0, result, source, diagnostic))


def release_reply() -> bytes:
    return HEADER.pack(RELEASE_RP, 4) + b"\x00" * 4


def abort(reason: int, source: int = 0x02) -> bytes:
    return HEADER.pack(ABORT, 4) + bytes((0, 0, source, reason))


def command_pdu(context_id: int, command: bytes) -> bytes:
    """One P-DATA-TF carrying a whole command set (responses are a few hundred bytes)."""
    item = ITEM.pack(len(command) + 2, context_id, COMMAND | LAST)
    return HEADER.pack(P_DATA_TF, len(item) + len(command)) + item + command


def message_pdus(context_id: int, command: bytes, dataset: bytes, max_pdu: int) -> bytes:
    """A whole DIMSE message we send (a command set and its data set), as P-DATA-TF PDUs no
    longer than the peer's maximum (`max_pdu`, 0 = unlimited), one PDV each (PS3.8 9.3.5)."""
    room = max(max_pdu - 6, 2) if max_pdu else max(len(command), len(dataset), 1)
    out = bytearray()
    for payload, kind in ((command, COMMAND), (dataset, 0)):
        for at in range(0, len(payload), room):
            chunk = payload[at : at + room]
            control = kind | (LAST if at + room >= len(payload) else 0)
            item = ITEM.pack(len(chunk) + 2, context_id, control)
            out += HEADER.pack(P_DATA_TF, len(item) + len(chunk)) + item + chunk
    return bytes(out)
