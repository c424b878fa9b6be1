"""An object to a local file, through the ObjectStore protocol (any backend)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from libs.contracts.errors import PermanentError
from libs.storage.base import ObjectStore
from libs.storage.local import LocalStore


async def download(storage: ObjectStore, key: str, target: Path) -> None:
    """Stream `key` into `target`; a missing object is a PermanentError naming the key."""
    try:
        with target.open("wb") as out:
            async for chunk in storage.read(key):
                out.write(chunk)
    except (FileNotFoundError, KeyError):
        raise PermanentError(f"the object {key} is not in storage") from None


@asynccontextmanager
async def local_file(storage: ObjectStore, key: str, scratch: Path) -> AsyncIterator[Path]:
    """`key` as a local file to read: the stored file itself on local storage (no copy),
    else a copy downloaded into the folder `scratch`; a missing object is a PermanentError.
    Read it only inside the block (a copy is the caller's to remove with `scratch`)."""
    if isinstance(storage, LocalStore):
        path = storage.path_for(key)
        if not path.is_file():
            raise PermanentError(f"the object {key} is not in storage")
        yield path
        return
    path = scratch / "object"
    await download(storage, key, path)
    yield path
