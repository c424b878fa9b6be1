"""An object to a local file, through the ObjectStore protocol (any backend)."""

from __future__ import annotations

from pathlib import Path

from libs.contracts.errors import PermanentError
from libs.storage.base import ObjectStore


async def download(storage: ObjectStore, key: str, target: Path) -> None:
    """Stream `key` into `target`; a missing object is a PermanentError naming the key."""
    try:
        with target.open("wb") as out:
            async for chunk in storage.read(key):
                out.write(chunk)
    except (FileNotFoundError, KeyError):
        raise PermanentError(f"the object {key} is not in storage") from None
