"""dicomflow client core, shared by the desktop client and `dicomflow fetch`.

- `api.Client`: typed study search and study detail over the dicomflow API (Bearer key).
- `download.download`: an archive to a `.part` file with HTTP Range + If-Range against the
  ETag (resume after a dropped connection or a restart; a changed archive restarts cleanly),
  progress callbacks and cancellation.
- `unpack.unpack`: tar.zst, ZIP or TAR verified (zstd checksum, ZIP CRCs, manifest SHA-256)
  and unpacked into a temporary folder renamed into place at the end; no entry can escape it.
- `fetch.fetch_study`: the three above in order, re-downloading once when the archive turns
  out truncated or tampered with.
- `viewer`: the configured viewer command (`{folder}`) or the system's file manager.
"""

from dicomflow_client.api import Client, Patient, SearchFilter, Study, Total
from dicomflow_client.errors import (
    Cancelled,
    ClientError,
    DiskFull,
    IntegrityError,
    NotFound,
    PermissionDenied,
    ServerError,
    Unauthorized,
    Unreachable,
    UnsafeArchive,
)
from dicomflow_client.fetch import fetch_study
from dicomflow_client.progress import Progress

__all__ = [
    "Cancelled",
    "Client",
    "ClientError",
    "DiskFull",
    "IntegrityError",
    "NotFound",
    "Patient",
    "PermissionDenied",
    "Progress",
    "SearchFilter",
    "ServerError",
    "Study",
    "Total",
    "Unauthorized",
    "Unreachable",
    "UnsafeArchive",
    "fetch_study",
]
