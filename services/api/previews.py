"""Previews for the API: the stored JPEG when it fits the request, else rendered on the fly
from the canonical copy in an isolated worker (custom window, other frames, or an instance
the converter did not render ahead: it renders one image per series). A render with the
file's own window is kept next to the copy, so each is rendered once. Renders are capped:
`concurrency` at once, `queue` waiting, and the instance is copied out of storage only once
its render may start; beyond the queue the caller is told to retry (`RenderBusy`). DICOMweb
frames and bulk data on remote storage take the same slots (`slot()`) for their copies."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from libs.contracts.errors import PermanentError
from libs.imaging.isolated import Renderer
from libs.imaging.jobs import Kind, RenderRequest
from libs.imaging.keys import preview_key
from libs.imaging.window import Window
from libs.runtime.logging import get_logger
from libs.storage import ObjectStore, instance_key
from libs.storage.download import download

THUMBNAIL_SIZE = 256
log = get_logger(__name__)

RETRY_AFTER_SECONDS = 2


class RenderBusy(Exception):
    """Every render slot is taken and the queue is full: try again shortly."""


class PreviewUnavailable(Exception):
    """No image for this instance: the reason is for the caller."""


@dataclass(frozen=True)
class Jpeg:
    """Either the stored object's bytes as a stream, or freshly rendered bytes."""

    stream: AsyncIterator[bytes] | None = None
    data: bytes = b""
    rendered: bool = False


@dataclass(frozen=True)
class InstanceRef:
    study_uid: str
    series_uid: str
    sop_uid: str


class PreviewSource:
    def __init__(
        self, storage: ObjectStore, renderer: Renderer, *, concurrency: int = 1, queue: int = 8
    ) -> None:
        self.storage = storage
        self.renderer = renderer
        self._slots = asyncio.Semaphore(concurrency)
        self._queue = queue
        self._waiting = 0

    async def jpeg(self, ref: InstanceRef, kind: Kind, frame: int, window: Window | None) -> Jpeg:
        uids = (ref.study_uid, ref.series_uid, ref.sop_uid)
        if window is None:
            key = preview_key(*uids, kind, frame)
            if await self.storage.size(key) is not None:
                return Jpeg(stream=self.storage.read(key))
        request = RenderRequest(
            frames=(frame,), kinds=(kind,), window=window, thumbnail_size=THUMBNAIL_SIZE
        )
        async with self.slot():  # only now is the instance copied out of storage
            with tempfile.TemporaryDirectory(prefix="api-preview-") as tmp:
                path = Path(tmp) / "instance.dcm"
                try:
                    # The original's pixels: a header correction (ADR 0025) has the same ones.
                    await download(self.storage, instance_key(*uids), path)
                    result = await self.renderer.render(path, request)
                except PermanentError as exc:  # Unrenderable, worker died or timed out, gone
                    raise PreviewUnavailable(str(exc)) from None
                data = result.images[0].jpeg
                if window is None:
                    await self._keep(preview_key(*uids, kind, frame), data, Path(tmp) / "keep.jpg")
        return Jpeg(data=data, rendered=True)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the `concurrency` slots, after at most `queue` others waiting; `RenderBusy`
        beyond. Whatever copies an instance out of storage for the workers (a render, DICOMweb
        frames and bulk data on remote storage) holds one while the copy exists."""
        if self._slots.locked() and self._waiting >= self._queue:
            raise RenderBusy(f"{self._waiting} renders are waiting already")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()

    async def _keep(self, key: str, data: bytes, tmp: Path) -> None:
        """Store a render with the file's own window where the converter would have put it.
        Another render already there (the converter's, a concurrent request) stands; a store
        that cannot be written (read-only, full) costs a render per request, not the answer."""
        tmp.write_bytes(data)
        try:
            await self.storage.put_file(key, tmp, expected_sha256=hashlib.sha256(data).hexdigest())
        except PermanentError:
            pass
        except Exception as exc:
            log.warning("rendered preview not kept", key=key, error=repr(exc))
