"""Where an archive instance's file is on this machine, or why it cannot be read here."""

from __future__ import annotations

import os
from pathlib import Path

from services.dcm4chee_watcher.archive import ArchiveFile

NO_RETRIEVE = "not fetched by C-MOVE: DCM4CHEE_DICOM_HOST is not set"


def resolve(f: ArchiveFile, roots: dict[str, Path]) -> Path | str:
    """The file's absolute path, or the reason it is unreachable. The path the archive
    records is kept under its storage root: `..`, absolute paths and symlinks that lead
    out of it are refused."""
    if not f.storage or not f.path:
        return "the archive records no file for this instance"
    if f.status != 0:
        return f"the archive marks its file unusable (location status {f.status})"
    root = roots.get(f.storage)
    if root is None:
        return f"storage {f.storage!r} is not in DCM4CHEE_STORAGE_ROOTS"
    base = root.resolve()
    candidate = (base / f.path.replace("\\", "/")).resolve()
    if not candidate.is_relative_to(base):
        return f"file path {f.path!r} leads outside storage {f.storage!r}"
    if not candidate.is_file():
        return f"file not found at {candidate}"
    if not os.access(candidate, os.R_OK):
        return f"file not readable at {candidate}"
    return candidate
