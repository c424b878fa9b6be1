"""Reading what a discovery event points at (claim-check URIs)."""

from __future__ import annotations

from pathlib import Path

from libs.contracts.errors import PermanentError, SourceGone
from libs.storage.local import path_from_file_url


def local_path(uri: str) -> Path:
    """The path a `file://` URI names, not looked at: for a reader that judges the file
    where it opens it (the extractor: `libs.dicom.source_file`, whose one refusal for a path
    leading outside its roots must not turn into "gone" when the target is missing)."""
    if not uri.startswith("file://"):
        raise PermanentError(f"unsupported source URI scheme: {uri[:40]!r}")
    return path_from_file_url(uri)


def local_source(uri: str) -> Path:
    """The local file behind a `file://` URI; a vanished or unreadable file is permanent."""
    path = local_path(uri)
    if not path.is_file():
        raise SourceGone(f"source file is gone or not a regular file: {path}")
    return path
