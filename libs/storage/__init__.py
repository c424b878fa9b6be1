"""Object storage for DICOM bytes, chosen by URL scheme (`file://`, `gs://`)."""

from libs.storage.base import ObjectStore, StoredObject, conflict_key, instance_key, open_store

__all__ = ["ObjectStore", "StoredObject", "conflict_key", "instance_key", "open_store"]
