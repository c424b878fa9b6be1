"""Any ObjectStore, counting the new objects and bytes it writes (for dashboards)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from libs.runtime.metrics import StorageMetrics
from libs.storage.base import ObjectStore, PutRequest, StoredObject, put_files


class MeteredStore:
    def __init__(self, store: ObjectStore, metrics: StorageMetrics) -> None:
        self._store = store
        self._metrics = metrics
        self.url = store.url

    async def put_file(self, key: str, source: Path, *, expected_sha256: str) -> StoredObject:
        stored = await self._store.put_file(key, source, expected_sha256=expected_sha256)
        if stored.created:  # a redelivery finding its identical copy adds nothing
            self._metrics.objects.inc()
            self._metrics.bytes.inc(stored.size)
        return stored

    async def put_files(self, items: Sequence[PutRequest]) -> list[StoredObject | Exception]:
        out = await put_files(self._store, items)
        for stored in out:
            if isinstance(stored, StoredObject) and stored.created:
                self._metrics.objects.inc()
                self._metrics.bytes.inc(stored.size)
        return out

    async def size(self, key: str) -> int | None:
        return await self._store.size(key)

    def read(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        return self._store.read(key, chunk_size)

    def url_for(self, key: str) -> str:
        return self._store.url_for(key)

    def keys(self, prefix: str = "", *, start_after: str = "") -> AsyncIterator[str]:
        return self._store.keys(prefix, start_after=start_after)
