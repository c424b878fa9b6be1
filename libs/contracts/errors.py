"""Errors that decide what the bus does with a message."""


class PermanentError(Exception):
    """The message will never succeed on retry: it goes to the DLQ at once, `str(e)` as reason."""


class NotDicomError(PermanentError):
    """The file is not DICOM at all (empty, text, another format)."""


class DicomParseError(PermanentError):
    """The file looks like DICOM but cannot be read (truncated, malformed, missing UIDs)."""
