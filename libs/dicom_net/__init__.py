"""DICOM networking over pynetdicom: socket tuning, presentation contexts and an asyncio client."""
