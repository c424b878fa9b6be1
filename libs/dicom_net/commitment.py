"""Typed Storage Commitment (Push Model, PS3.4 annex J) results for the SCU side."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydicom.dataset import Dataset

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"


class SopReference(BaseModel):
    model_config = ConfigDict(frozen=True)

    sop_class_uid: str
    sop_instance_uid: str


class FailedReference(SopReference):
    failure_reason: int = Field(description="0x0112 no such object, 0x0110 processing failure…")


class CommitmentResult(BaseModel):
    """What the N-EVENT-REPORT said: only `committed` instances may be deleted locally."""

    model_config = ConfigDict(frozen=True)

    transaction_uid: str
    event_type: int = Field(description="1: all committed, 2: some failed")
    committed: list[SopReference] = Field(default_factory=list)
    failed: list[FailedReference] = Field(default_factory=list)

    @classmethod
    def from_report(cls, event_type: int, ds: Dataset) -> CommitmentResult:
        return cls(
            transaction_uid=str(ds.get("TransactionUID", "")),
            event_type=event_type,
            committed=[
                SopReference(
                    sop_class_uid=str(i.ReferencedSOPClassUID),
                    sop_instance_uid=str(i.ReferencedSOPInstanceUID),
                )
                for i in ds.get("ReferencedSOPSequence", None) or []
            ],
            failed=[
                FailedReference(
                    sop_class_uid=str(i.ReferencedSOPClassUID),
                    sop_instance_uid=str(i.ReferencedSOPInstanceUID),
                    failure_reason=int(i.get("FailureReason", 0x0110)),
                )
                for i in ds.get("FailedSOPSequence", None) or []
            ],
        )


def request_dataset(transaction_uid: str, references: list[SopReference]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = []
    for ref in references:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        ds.ReferencedSOPSequence.append(item)
    return ds
