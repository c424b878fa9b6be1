"""What a DICOM peer can do to a call, as exceptions a caller can act on."""

from __future__ import annotations

from pynetdicom.status import code_to_category

# Meanings of the statuses Q/R peers return most (PS3.4 C.4); others get their category.
MEANINGS = {
    0xA700: "Refused: out of resources",
    0xA701: "Refused: out of resources, unable to calculate number of matches",
    0xA702: "Refused: out of resources, unable to perform sub-operations",
    0xA801: "Refused: move destination unknown",
    0xA900: "Identifier does not match SOP class",
    0xB000: "Sub-operations complete, one or more failures or warnings",
    0xC000: "Unable to process",
    0xFE00: "Sub-operations terminated due to Cancel indication",
    0x0110: "Processing failure",
    0x0122: "SOP class not supported",
    0x0124: "Not authorised",
}


def status_meaning(code: int) -> str:
    if code in MEANINGS:
        return MEANINGS[code]
    if 0xC000 <= code <= 0xCFFF:
        return "Unable to process"
    return str(code_to_category(code))


class DicomNetError(Exception):
    """Base of every DICOM networking failure."""


class ConnectionFailed(DicomNetError):
    """The peer could not be reached (refused, unreachable, TLS handshake)."""


class AssociationRejected(DicomNetError):
    def __init__(self, result: str, source: str, reason: str, *, transient: bool) -> None:
        super().__init__(f"association rejected ({result}, {source}): {reason}")
        self.reason = reason
        self.transient = transient


class AssociationAborted(DicomNetError):
    """The peer (or the network) aborted the association mid-operation."""


class DicomTimeout(DicomNetError):
    """No answer within the call's timeout; the association was aborted."""


class FailureStatus(DicomNetError):
    def __init__(self, operation: str, code: int) -> None:
        self.code = code
        self.meaning = status_meaning(code)
        super().__init__(f"{operation} failed with status 0x{code:04X}: {self.meaning}")


class RetrieveTooLarge(DicomNetError):
    """A C-GET to memory went past its size cap; the association was aborted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"C-GET to memory exceeded its cap of {limit} bytes")
