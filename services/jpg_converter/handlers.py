"""Render a stored instance's first (and middle) frame to a preview and a thumbnail JPEG,
written next to the canonical copy; announce them, or why there are none, on dicom.preview.v1.

Eagerly, by default, only the first image of each series seen (its thumbnail is what a
study list shows): a 600-slice CT needs one, not 1,200 renders nobody asked for. The
others are announced `skipped`; the API renders them on first request and keeps them.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Literal

from libs.contracts.errors import PermanentError
from libs.contracts.events import Event, InstancePreviewed, InstanceStored, PreviewImage
from libs.imaging.isolated import Renderer
from libs.imaging.jobs import RenderedImage, RenderRequest, RenderResult
from libs.imaging.keys import preview_key
from libs.kafka.consumer import Outcome
from libs.storage import ObjectStore, instance_key
from libs.storage.download import local_file


def outcome(
    event: InstanceStored,
    status: Literal["rendered", "unrenderable", "skipped"],
    *,
    reason: str = "",
    result: RenderResult | None = None,
    images: Sequence[PreviewImage] = (),
) -> InstancePreviewed:
    h = event.header
    return InstancePreviewed(
        correlation_id=event.correlation_id,
        source=event.source,
        file_id=event.file.file_id,
        study_uid=h.study.study_uid,
        series_uid=h.series.series_uid,
        sop_instance_uid=h.instance.sop_instance_uid,
        status=status,
        reason=reason,
        frames=result.frames if result else None,
        voi=result.images[0].voi if result and result.images else "",
        images=list(images),
    )


async def store(
    storage: ObjectStore, event: InstanceStored, image: RenderedImage, work: Path
) -> PreviewImage:
    h = event.header
    key = preview_key(
        h.study.study_uid, h.series.series_uid, h.instance.sop_instance_uid, image.kind, image.frame
    )
    tmp = work / f"{image.kind}-{image.frame}.jpg"
    tmp.write_bytes(image.jpeg)
    try:
        stored = await storage.put_file(
            key, tmp, expected_sha256=hashlib.sha256(image.jpeg).hexdigest()
        )
        url, size = stored.url, stored.size
    except PermanentError:
        # An earlier render (another library version) is already there: previews are
        # derived data, and the first one written stands.
        existing = await storage.size(key)
        if existing is None:
            raise
        url, size = storage.url_for(key), existing
    return PreviewImage(
        frame=image.frame,
        kind=image.kind,
        url=url,
        size=size,
        width=image.width,
        height=image.height,
    )


async def handle_stored(
    event: InstanceStored, *, storage: ObjectStore, renderer: Renderer, request: RenderRequest
) -> list[Event]:
    if event.disposition == "conflict":
        return [outcome(event, "skipped", reason="conflicting copy, not the canonical instance")]
    if event.disposition == "revision":  # same pixels as the instance already rendered
        return [outcome(event, "skipped", reason="header revision, the pixels are unchanged")]
    if not event.hashes.has_pixels:
        return [outcome(event, "skipped", reason="no pixel data (not an image object)")]
    h = event.header
    try:
        key = instance_key(h.study.study_uid, h.series.series_uid, h.instance.sop_instance_uid)
    except ValueError as exc:
        return [outcome(event, "unrenderable", reason=str(exc))]
    with tempfile.TemporaryDirectory(prefix="jpg-converter-") as tmp:
        work = Path(tmp)
        # Rendered from the stored file itself on local storage: no copy of it. A missing
        # object raises (dead-lettered), as a download of it did.
        async with local_file(storage, key, work) as path:
            try:
                result = await renderer.render(path, request)
            except PermanentError as exc:  # Unrenderable, or the render process died / timed out
                return [outcome(event, "unrenderable", reason=f"{type(exc).__name__}: {exc}")]
        images = [await store(storage, event, image, work) for image in result.images]
    return [outcome(event, "rendered", result=result, images=images)]


ON_REQUEST = "rendered on first request (not the first image of its series)"


class Representatives:
    """The image of each series rendered eagerly: the first one this process saw (a
    redelivery of it renders again, idempotently). Bounded: the oldest series are forgotten,
    at worst costing one more render of a series seen long ago."""

    def __init__(self, limit: int = 100_000) -> None:
        self._by_series: OrderedDict[str, str] = OrderedDict()
        self._limit = limit

    def eager(self, event: InstanceStored) -> bool:
        series, sop = event.header.series.series_uid, event.header.instance.sop_instance_uid
        first = self._by_series.setdefault(series, sop)
        self._by_series.move_to_end(series)
        while len(self._by_series) > self._limit:
            self._by_series.popitem(last=False)
        return first == sop


async def handle_stored_batch(
    events: Sequence[InstanceStored],
    *,
    convert: Callable[[InstanceStored], Awaitable[list[Event]]],
    representatives: Representatives | None,
) -> list[Outcome]:
    """`convert` (handle_stored) for every event, or with `representatives` only for the
    first image of each series (and what is skipped anyway: conflicts, no pixels)."""
    out: list[Outcome | None] = [None] * len(events)
    todo = []
    for n, e in enumerate(events):
        lazy = (
            representatives is not None
            and e.disposition not in ("conflict", "revision")
            and e.hashes.has_pixels
        )
        if lazy and representatives is not None and not representatives.eager(e):
            out[n] = [outcome(e, "skipped", reason=ON_REQUEST)]
        else:
            todo.append(n)
    results = await asyncio.gather(*(convert(events[n]) for n in todo), return_exceptions=True)
    for n, result in zip(todo, results, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result  # cancelled: stopping
        out[n] = result
    return [o for o in out if o is not None]
