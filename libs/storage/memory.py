"""In-memory storage for unit tests (`memory://name`); same rules as the real backends."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from libs.contracts.errors import PermanentError
from libs.storage.base import StoredObject, check_key, register_backend


class MemoryStore:
    def __init__(self, url: str = "memory://test") -> None:
        self.url = url
        self.objects: dict[str, bytes] = {}

    def url_for(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{check_key(key)}"

    async def put_file(self, key: str, source: Path, *, expected_sha256: str) -> StoredObject:
        data = source.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise PermanentError("source changed since it was extracted")
        existing = self.objects.get(check_key(key))
        if existing is not None:
            if existing != data:
                raise PermanentError(f"refusing to overwrite {key}: it holds different content")
            return StoredObject(self.url_for(key), len(data), digest, created=False)
        self.objects[key] = data
        return StoredObject(self.url_for(key), len(data), digest, created=True)

    async def size(self, key: str) -> int | None:
        data = self.objects.get(key)
        return None if data is None else len(data)

    async def read(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        data = self.objects.get(key)
        if data is None:
            raise FileNotFoundError(self.url_for(key))
        for i in range(0, len(data), chunk_size):
            yield data[i : i + chunk_size]

    async def keys(self, prefix: str = "", *, start_after: str = "") -> AsyncIterator[str]:
        for key in sorted(self.objects):
            if key.startswith(prefix) and key > start_after:
                yield key


register_backend("memory", MemoryStore)
