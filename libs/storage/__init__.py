"""Object storage for DICOM bytes, chosen by URL scheme (`file://`, `gs://`).

The backends register themselves in `base.BACKENDS` when imported; `open_store` imports them
(here, not in `base`, so that no backend and `base` import each other)."""

from urllib.parse import urlsplit

from libs.storage.base import (
    BACKENDS,
    ObjectStore,
    StoredObject,
    conflict_key,
    instance_key,
    served_key,
)

__all__ = [
    "ObjectStore",
    "StoredObject",
    "conflict_key",
    "instance_key",
    "open_store",
    "served_key",
]


def open_store(url: str) -> ObjectStore:
    """The backend for a storage URL, by scheme."""
    # Import for their registration side effect; kept here so callers need one import.
    from libs.storage import local, memory  # noqa: F401

    scheme = urlsplit(url).scheme
    if scheme == "gs":  # the `gcs` extra: imported only where it is used
        try:
            from libs.storage import gcs  # noqa: F401
        except ImportError as exc:
            raise ValueError(f"gs:// needs the `gcs` extra (google-cloud-storage): {exc}") from exc
    try:
        factory = BACKENDS[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in sorted(BACKENDS))
        raise ValueError(f"unsupported STORAGE_URL scheme {scheme!r} (known: {known})") from None
    return factory(url)
