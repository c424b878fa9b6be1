"""Errors that decide what the bus does with a message."""

import errno

# A full disk or quota: an outage (hold and retry until space is freed), never the fault of
# the message or file being written.
FULL_DISK = frozenset({errno.ENOSPC, errno.EDQUOT})


class PermanentError(Exception):
    """The message will never succeed on retry: it goes to the DLQ at once, `str(e)` as reason."""


class SourceGone(PermanentError):
    """The file an event points at is no longer there. Bad input for a new file; for an
    event delivered again after its file reached an outcome (and its staged copy was
    cleaned up) it is not an error at all: stages skip those (`libs.kafka.redelivered`)."""


class NotDicomError(PermanentError):
    """The file is not DICOM at all (empty, text, another format)."""


class DicomParseError(PermanentError):
    """The file looks like DICOM but cannot be read (truncated, malformed, missing UIDs)."""


class StorageUnavailable(ConnectionError):
    """The object store is away or failing on its side (5xx, 429, connection resets) after
    the client's own retries: an outage (hold and retry), never the fault of the message."""
