"""Whether a failed DICOM call is worth another attempt later, and when: shared by the
watchers that retrieve from a peer (pacs-watcher, dcm4chee-watcher)."""

from __future__ import annotations

from libs.dicom_net.errors import AssociationRejected, DicomNetError, FailureStatus


def transient(exc: BaseException) -> bool:
    """Worth another attempt later: the peer is away, busy or out of resources. A refusal
    it will repeat (unknown move destination, our AE not allowed, a bad identifier) is not."""
    if isinstance(exc, FailureStatus):
        return 0xA700 <= exc.code <= 0xA7FF
    if isinstance(exc, AssociationRejected):
        return exc.transient
    return isinstance(exc, (DicomNetError, OSError))


def retry_delay(attempts: int, *, base: float, ceiling: float) -> float:
    """Before attempt `attempts + 1`: base, 2 × base, 4 × base ... at most `ceiling`."""
    return float(min(ceiling, base * 2 ** max(0, attempts - 1)))
