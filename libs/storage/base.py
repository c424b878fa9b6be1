"""The storage port, canonical key layout, and the backend registry."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from libs.dicom.uids import require_uid

_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class StoredObject:
    url: str
    size: int
    sha256: str
    created: bool  # False when an identical object was already there (redelivery)


@dataclass(frozen=True)
class PutRequest:
    """One `put_file` of a batch."""

    key: str
    source: Path
    expected_sha256: str
    # `Hashes.source_stamp`: a store may copy without hashing while the source still shows it.
    source_stamp: str | None = None


class ObjectStore(Protocol):
    """Where verified copies of instances live. Writes are atomic and idempotent."""

    url: str

    async def put_file(self, key: str, source: Path, *, expected_sha256: str) -> StoredObject:
        """Copy `source` to `key`; the copy's SHA-256 must equal `expected_sha256`.

        An identical object already at `key` is success (created=False); a different one
        is never overwritten (PermanentError).
        """
        ...

    async def size(self, key: str) -> int | None:
        """Size in bytes, or None when there is no object at `key`."""
        ...

    def read(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Stream an object's bytes; FileNotFoundError when there is no object at `key`."""
        ...

    def url_for(self, key: str) -> str: ...

    def keys(self, prefix: str = "", *, start_after: str = "") -> AsyncIterator[str]:
        """Every object's key under `prefix`, in ascending (code point) order, starting after
        `start_after`; the listing is streamed (bounded memory, however many objects)."""
        ...


def check_key(key: str) -> str:
    """A key is relative, '/'-separated, each part a plain name: no '..', no absolute paths."""
    parts = key.split("/")
    if not parts or not all(_KEY_PART.match(p) and p not in {".", ".."} for p in parts):
        raise ValueError(f"unsafe storage key: {key!r}")
    return key


def instance_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """`studies/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`, every UID validated first."""
    return "/".join(
        (
            "studies",
            require_uid(study_uid, "StudyInstanceUID"),
            require_uid(series_uid, "SeriesInstanceUID"),
            require_uid(sop_uid, "SOPInstanceUID") + ".dcm",
        )
    )


def study_prefix(study_uid: str) -> str:
    return f"studies/{require_uid(study_uid, 'StudyInstanceUID')}/"


def conflict_key(sop_uid: str, content_sha256: str) -> str:
    """Conflicting copies are kept aside, never over the original."""
    if not re.fullmatch(r"[0-9a-f]{64}", content_sha256):
        raise ValueError("content hash must be 64 lowercase hex digits")
    return f"conflicts/{require_uid(sop_uid, 'SOPInstanceUID')}/{content_sha256}.dcm"


def revision_key(sop_uid: str, file_sha256: str) -> str:
    """A corrected header of an instance (ADR 0025) is kept beside the original, never over it."""
    if not re.fullmatch(r"[0-9a-f]{64}", file_sha256):
        raise ValueError("file hash must be 64 lowercase hex digits")
    return f"revisions/{require_uid(sop_uid, 'SOPInstanceUID')}/{file_sha256}.dcm"


def served_key(study_uid: str, series_uid: str, sop_uid: str, revision_key: str | None) -> str:
    """The key of the bytes served for an indexed instance: its latest header correction's
    (`instances.revision_key`, ADR 0025) or else its canonical copy. Every reader (WADO,
    archives, exports) resolves an instance through this one function."""
    return revision_key or instance_key(study_uid, series_uid, sop_uid)


# Filled by each backend module as it is imported; `libs.storage.open_store` picks by scheme.
BACKENDS: dict[str, Callable[[str], ObjectStore]] = {}


def register_backend(scheme: str, factory: Callable[[str], ObjectStore]) -> None:
    BACKENDS[scheme] = factory


async def put_files(
    store: ObjectStore, items: Sequence[PutRequest]
) -> list[StoredObject | Exception]:
    """`put_file` for each item; a store with a batch method (`put_files`: group durability)
    uses it. Per item its object, or the error it failed with."""
    batch = getattr(store, "put_files", None)
    if batch is not None:
        result: list[StoredObject | Exception] = await batch(items)
        return result
    done = await asyncio.gather(
        *(store.put_file(i.key, i.source, expected_sha256=i.expected_sha256) for i in items),
        return_exceptions=True,
    )
    out: list[StoredObject | Exception] = []
    for r in done:
        if isinstance(r, BaseException) and not isinstance(r, Exception):
            raise r
        out.append(r)
    return out
