"""Which instances may carry identifying text in their pixels (burned-in annotation), which
the header de-identification cannot remove: left out of an export unless asked for."""

from __future__ import annotations

from pydicom.dataset import Dataset

# Modalities whose images commonly carry the patient's name or ID on screen, when the
# object does not say otherwise (BurnedInAnnotation = NO).
AT_RISK_MODALITIES = frozenset({"US", "XC", "ES", "GM", "SM", "OT", "DOC"})
# Secondary Capture (screen shots, scanned documents) and encapsulated documents.
AT_RISK_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.104")


def burned_in_risk(ds: Dataset) -> str | None:
    """Why the pixels may identify the patient, or None."""
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES"
    if flag == "NO":
        return None
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class.startswith(AT_RISK_SOP_PREFIXES):
        return f"SOP class {sop_class} (secondary capture or document) without BurnedInAnnotation"
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in AT_RISK_MODALITIES:
        return f"modality {modality} without BurnedInAnnotation"
    return None
