"""DIMSE command sets the receiver understands (PS3.7 section 9 and annex E): C-STORE and
C-ECHO requests in, their responses out, and the File Meta Information of a stored instance.

Command sets are Implicit VR Little Endian, a handful of elements; encoding them through
pydicom's generic writer cost more than a millisecond of CPU per instance (three datasets
per C-STORE), so these few fixed layouts are packed here. The reader is bounds-checked and
takes only the elements it needs.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
N_EVENT_REPORT_RQ = 0x0100
N_ACTION_RQ = 0x0130
RESPONSE = 0x8000
NO_DATASET = 0x0101

# Statuses we answer, PS3.4 B.2.3 and PS3.7 annex C
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # cannot persist or publish: the sender keeps it and retries later
CANNOT_UNDERSTAND = 0xC000  # the request's UIDs are unusable
SOP_CLASS_NOT_SUPPORTED = 0x0122
UNRECOGNISED_OPERATION = 0x0211

MAX_COMMAND_BYTES = 64 * 1024  # a command set is a few hundred bytes


IMPLICIT = struct.Struct("<HHL")  # group, element, value length
EXPLICIT_SHORT = struct.Struct("<HH2sH")  # group, element, VR, value length
EXPLICIT_LONG = struct.Struct("<HH2sxxL")  # OB and the like: two reserved bytes, long length

# Command set elements (group 0000), PS3.7 annex E
AFFECTED_SOP_CLASS = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_RESPONDED = 0x0120
DATASET_TYPE = 0x0800
STATUS = 0x0900
AFFECTED_SOP_INSTANCE = 0x1000
REQUESTED_SOP_CLASS = 0x0003
REQUESTED_SOP_INSTANCE = 0x1001
ACTION_TYPE = 0x1008


def read_command(raw: bytes) -> dict[int, bytes]:
    """Group 0000 elements of an Implicit VR Little Endian command set, by element number."""
    out: dict[int, bytes] = {}
    at = 0
    while at < len(raw):
        if at + IMPLICIT.size > len(raw):
            raise ValueError("command set truncated inside an element header")
        group, element, length = IMPLICIT.unpack_from(raw, at)
        at += IMPLICIT.size
        if group != 0x0000 or length > len(raw) - at:
            raise ValueError(f"command element ({group:04X},{element:04X}) is invalid")
        out[element] = raw[at : at + length]
        at += length
    return out


def _us(elements: dict[int, bytes], element: int, default: int | None = None) -> int:
    value = elements.get(element)
    if value is None or len(value) != 2:
        if default is None:
            raise ValueError(f"command element (0000,{element:04X}) missing or not US")
        return default
    return int.from_bytes(value, "little")


def _ui(elements: dict[int, bytes], element: int) -> str:
    raw = elements.get(element, b"").rstrip(b"\x00 ")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"command element (0000,{element:04X}) is not ASCII") from None


def _implicit(element: int, value: bytes) -> bytes:
    return IMPLICIT.pack(0x0000, element, len(value)) + value


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text_value(text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


@dataclass(frozen=True)
class Command:
    field: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    has_dataset: bool
    requested_sop_class_uid: str = ""  # N-ACTION and the like
    requested_sop_instance_uid: str = ""
    action_type: int = 0

    @property
    def is_response(self) -> bool:
        return bool(self.field & RESPONSE)

    @classmethod
    def decode(cls, raw: bytes) -> Command:
        """Raises ValueError with the reason when the bytes are not a usable command set."""
        elements = read_command(raw)
        field = _us(elements, COMMAND_FIELD)
        # A response (ours to ignore, e.g. an N-EVENT-REPORT-RSP) carries the id it answers.
        answered = _us(elements, MESSAGE_ID_RESPONDED, 0) if field & RESPONSE else None
        return cls(
            field=field,
            message_id=_us(elements, MESSAGE_ID, answered),
            sop_class_uid=_ui(elements, AFFECTED_SOP_CLASS),
            sop_instance_uid=_ui(elements, AFFECTED_SOP_INSTANCE),
            has_dataset=_us(elements, DATASET_TYPE, NO_DATASET) != NO_DATASET,
            requested_sop_class_uid=_ui(elements, REQUESTED_SOP_CLASS),
            requested_sop_instance_uid=_ui(elements, REQUESTED_SOP_INSTANCE),
            action_type=_us(elements, ACTION_TYPE, 0),
        )

    def store_problem(self, context_abstract_syntax: str) -> str | None:
        """Why a C-STORE request cannot be stored as it stands, or None."""
        if not self.has_dataset:
            return "C-STORE without a data set"
        if not _valid_uid(self.sop_instance_uid) or not _valid_uid(self.sop_class_uid):
            return "invalid Affected SOP Class/Instance UID"
        if self.sop_class_uid != context_abstract_syntax:
            return "SOP class differs from the presentation context's"
        return None


# PS3.5 9.1 forbids leading zeros in a component, but older modalities send them (e.g.
# `1.2.840.113619.2.55.3.0604`); the UID never names a file, so digits and dots will do.
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")


def _valid_uid(uid: str) -> bool:
    return len(uid) <= 64 and UID_PATTERN.fullmatch(uid) is not None


def response(cmd: Command, status: int) -> bytes:
    """The encoded response command set to `cmd` (C-STORE-RSP, C-ECHO-RSP, or a bare response
    with `status` to an operation we do not provide), elements in tag order."""
    body = b"".join(
        [
            _implicit(AFFECTED_SOP_CLASS, _uid_value(cmd.sop_class_uid))
            if cmd.sop_class_uid
            else b"",
            _implicit(COMMAND_FIELD, struct.pack("<H", (cmd.field | RESPONSE) & 0xFFFF)),
            _implicit(MESSAGE_ID_RESPONDED, struct.pack("<H", cmd.message_id)),
            _implicit(DATASET_TYPE, struct.pack("<H", NO_DATASET)),
            _implicit(STATUS, struct.pack("<H", status)),
            _implicit(AFFECTED_SOP_INSTANCE, _uid_value(cmd.sop_instance_uid))
            if cmd.field == C_STORE_RQ and cmd.sop_instance_uid
            else b"",
        ]
    )
    return _implicit(0x0000, struct.pack("<L", len(body))) + body


def _meta(element: int, vr: bytes, value: bytes) -> bytes:
    return EXPLICIT_SHORT.pack(0x0002, element, vr, len(value)) + value


def file_meta(cmd: Command, transfer_syntax: str, calling_ae: str) -> bytes:
    """PS3.10 File Meta Information (Explicit VR Little Endian, group length first) for a
    received instance; the UIDs were checked by `store_problem`."""
    body = b"".join(
        [
            EXPLICIT_LONG.pack(0x0002, 0x0001, b"OB", 2) + b"\x00\x01",
            _meta(0x0002, b"UI", _uid_value(cmd.sop_class_uid)),
            _meta(0x0003, b"UI", _uid_value(cmd.sop_instance_uid)),
            _meta(0x0010, b"UI", _uid_value(transfer_syntax)),
            _meta(0x0012, b"UI", _uid_value(PYNETDICOM_IMPLEMENTATION_UID)),
            _meta(0x0013, b"SH", _text_value(PYNETDICOM_IMPLEMENTATION_VERSION)),
            _meta(0x0016, b"AE", _text_value(calling_ae[:16])) if calling_ae else b"",
        ]
    )
    return _meta(0x0000, b"UL", struct.pack("<L", len(body))) + body
