"""De-identification per DICOM PS3.15 Annex E (Basic Application Level Confidentiality
Profile and some of its options), driven by the standard's Table E.1-1."""
