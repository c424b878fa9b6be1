"""Stored instances for WADO: which ones a request names, their bytes, a local path for the
workers, and their DICOM JSON (from the index; from the file for instances indexed before
the header was kept)."""

from __future__ import annotations

import asyncio
import tempfile
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import asyncpg
from fastapi import HTTPException
from pydicom import dcmread

from libs.contracts.errors import PermanentError
from libs.db.dicomweb import StoredInstance, stored_instances
from libs.dicom.dicomjson import absolute_bulk_uris, header_json
from libs.http.auth import Caller
from libs.storage import ObjectStore, served_key
from libs.storage.download import download
from libs.storage.local import LocalStore


def key_of(i: StoredInstance) -> str:
    return served_key(i.study_uid, i.series_uid, i.sop_uid, i.revision_key)


def instance_url(base: str, i: StoredInstance) -> str:
    return f"{base}/studies/{i.study_uid}/series/{i.series_uid}/instances/{i.sop_uid}"


async def find(
    pool: asyncpg.Pool,
    caller: Caller,
    study: str,
    series: str | None = None,
    sop: str | None = None,
    *,
    with_json: bool = False,
) -> list[StoredInstance]:
    """The instances named, or 404; the count goes to the audit log."""
    async with pool.acquire() as conn:
        found = await stored_instances(conn, study, series, sop, with_json=with_json)
    caller.saw(len(found))
    if not found:
        level = "instance" if sop else "series" if series else "study"
        raise HTTPException(status_code=404, detail=f"{level} not found")
    return found


Slot = Callable[[], AbstractAsyncContextManager[None]]  # PreviewSource.slot: RenderBusy when full


@asynccontextmanager
async def local_path(storage: ObjectStore, i: StoredInstance, slot: Slot) -> AsyncIterator[Path]:
    """The stored file as a local path: itself on local storage, else a temporary copy made
    only once one of the render `slot`s is ours (held until the copy is gone), so a burst of
    requests cannot fill the temporary folder with whole instances (issue 17, item 5)."""
    if isinstance(storage, LocalStore):
        path = storage.path_for(key_of(i))
        if not path.is_file():
            raise HTTPException(status_code=404, detail="the instance's file is not in storage")
        yield path
        return
    async with slot():
        with tempfile.TemporaryDirectory(prefix="dicomweb-") as tmp:
            path = Path(tmp) / "instance.dcm"
            try:
                await download(storage, key_of(i), path)
            except PermanentError:
                raise HTTPException(
                    status_code=404, detail="the instance's file is not in storage"
                ) from None
            yield path


def _file_json(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path, defer_size=1024)
    return header_json(ds) or "{}"


async def metadata_json(
    storage: ObjectStore, found: list[StoredInstance], base: str, slot: Slot
) -> bytes:
    """The DICOM JSON array of `found`, BulkDataURIs made absolute under `base`."""
    parts = []
    for i in found:
        text = i.dicom_json
        if text is None:  # indexed before headers were kept: read the file once
            async with local_path(storage, i, slot) as path:
                text = await asyncio.to_thread(_file_json, path)
        parts.append(absolute_bulk_uris(text, instance_url(base, i)))
    return ("[" + ",".join(parts) + "]").encode()
