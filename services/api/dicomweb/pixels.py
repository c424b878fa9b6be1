"""WADO-RS pixels (PS3.18 §10.4): frames, rendered images, thumbnails and bulk data of one
instance (permission `read`). Decoding runs in the API's isolated workers (ADR 0007/0008);
on remote storage the instance is copied out only once a render slot is free (the previews'
`API_RENDER_WORKERS` and `API_RENDER_QUEUE`; beyond, 503 with Retry-After).

Frames: `multipart/related; type="application/octet-stream"` with `transfer-syntax=*` or the
stored syntax (or the image media type of a compressed one, e.g. `image/jls`) gives the
frames as stored; `transfer-syntax=1.2.840.10008.1.2.1`, or none (the standard's default
for octet-stream), gives them decoded, uncompressed little endian.
"""

import asyncio
import warnings
from pathlib import Path
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydicom import dcmread

from libs.contracts.errors import PermanentError
from libs.dicom.dicomjson import bulk_path
from libs.http.auth import Authenticator, Caller
from libs.imaging.frames import FrameMissing, read_frames
from libs.imaging.jobs import Kind
from libs.imaging.window import VOI_FUNCTIONS, Window
from libs.runtime.sandbox import IsolatedExecutor
from libs.storage import ObjectStore
from services.api.dicomweb.common import (
    EXPLICIT_LE,
    JPEG,
    OCTETS,
    Uid,
    accepts,
    busy,
    not_acceptable,
)
from services.api.dicomweb.multipart import Part
from services.api.dicomweb.stored import find, local_path
from services.api.dicomweb.wado import MULTIPART, multipart_response
from services.api.previews import InstanceRef, PreviewSource, PreviewUnavailable, RenderBusy

# Media types of compressed frames (PS3.18 Table 8.7.3-2) by transfer syntax.
IMAGE_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}  # older names
InstancePath = "/studies/{study}/series/{series}/instances/{sop}"


def frame_list(text: str) -> tuple[int, ...]:
    try:
        frames = tuple(int(n) for n in text.split(","))
    except ValueError:
        raise HTTPException(status_code=400, detail=f"{text!r} is not a frame list") from None
    if not frames or min(frames) < 1 or len(frames) > 10_000:
        raise HTTPException(status_code=400, detail="frame numbers start at 1")
    return frames


def frame_syntax(request: Request, stored: str) -> tuple[bool, str]:
    """(decode?, part media type) for the Accept header; 406 when it cannot be met."""
    stored_type = IMAGE_TYPES.get(stored, OCTETS)
    for r in accepts(request):
        if r.media_type == "*/*":
            return False, f"{stored_type}; transfer-syntax={stored}"
        if r.media_type != MULTIPART:
            continue
        kind = r.params.get("type", OCTETS).lower()
        kind = ALIASES.get(kind, kind)
        syntax = r.params.get("transfer-syntax")
        if kind == OCTETS and syntax in (None, EXPLICIT_LE):
            decode = stored != EXPLICIT_LE
            return decode, f"{OCTETS}; transfer-syntax={EXPLICIT_LE}"
        as_stored = {"*", stored} | ({None} if kind == stored_type else set())
        if kind in (OCTETS, stored_type) and syntax in as_stored:
            return False, f"{kind}; transfer-syntax={stored}"
    raise not_acceptable(
        f'{MULTIPART}; type="{OCTETS}" uncompressed (transfer-syntax={EXPLICIT_LE}) or as '
        f"stored ({stored_type}, transfer-syntax={stored} or *)"
    )


def window_param(text: str | None) -> Window | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
        function = parts[2].strip().upper().replace("-", "_") if len(parts) > 2 else "LINEAR"
        if len(parts) > 3 or function not in VOI_FUNCTIONS:
            raise ValueError("function must be linear, linear-exact or sigmoid")
        return Window(center, width, function)
    except (ValueError, IndexError) as exc:
        raise HTTPException(
            status_code=400, detail=f"window={text!r}: center,width[,function] ({exc})"
        ) from None


def _bulk_value(path: Path, steps: list[tuple[int, int | None]]) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path, defer_size=1024)
    for tag, item in steps:
        if tag not in ds:
            raise KeyError(tag)
        if item is None:
            raw = ds.get_item(tag)
            value = raw.value if raw is not None else None
            if not isinstance(value, bytes):
                raise KeyError(tag)
            return value
        sequence = ds[tag].value
        ds = sequence[item - 1]
    raise KeyError("no element")


def pixels_router(
    pool: asyncpg.Pool,
    auth: Authenticator,
    storage: ObjectStore,
    previews: PreviewSource,
    executor: IsolatedExecutor,
) -> APIRouter:
    router = APIRouter(tags=["DICOMweb"])
    framer = Depends(auth.require("read", "dicomweb.frames"))
    renderer = Depends(auth.require("read", "dicomweb.rendered"))
    bulk = Depends(auth.require("read", "dicomweb.bulkdata"))

    @router.get(f"{InstancePath}/frames/{{frames}}", summary="Frames of an instance")
    async def frames(
        study: Uid,
        series: Uid,
        sop: Uid,
        frames: str,
        request: Request,
        caller: Annotated[Caller, framer],
    ) -> Response:
        numbers = frame_list(frames)
        [i] = await find(pool, caller, study, series, sop)
        decode, part_type = frame_syntax(request, i.transfer_syntax_uid)
        try:
            async with local_path(storage, i, previews.slot) as path:
                data = await executor.run(read_frames, str(path), numbers, decode)
        except RenderBusy as exc:
            raise busy(exc) from None
        except FrameMissing as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        except PermanentError as exc:  # not an image, undecodable, worker died, not stored
            raise HTTPException(status_code=406, detail=f"no frames: {exc}") from None
        return multipart_response(_parts(data, part_type), part_type.split(";")[0])

    async def jpeg(ref: InstanceRef, kind: Kind, frame: int, request: Request) -> Response:
        if not any(r.matches(JPEG) for r in accepts(request)):
            raise not_acceptable(JPEG)
        window = window_param(request.query_params.get("window"))
        try:
            image = await previews.jpeg(ref, kind, frame - 1, window)
        except PreviewUnavailable as exc:
            raise HTTPException(status_code=406, detail=f"no image: {exc}") from None
        except RenderBusy as exc:
            raise busy(exc) from None
        if image.stream is not None:
            return Response(b"".join([c async for c in image.stream]), media_type=JPEG)
        return Response(image.data, media_type=JPEG)

    def image_route(path: str, kind: Kind, summary: str) -> None:
        async def route(
            study: Uid,
            series: Uid,
            sop: Uid,
            request: Request,
            caller: Annotated[Caller, renderer],
            frames: str = "1",
        ) -> Response:
            number = frame_list(frames)[0]
            await find(pool, caller, study, series, sop)
            return await jpeg(InstanceRef(study, series, sop), kind, number, request)

        router.add_api_route(path, route, methods=["GET"], summary=summary)

    image_route(f"{InstancePath}/rendered", "preview", "An instance rendered (JPEG)")
    image_route(f"{InstancePath}/frames/{{frames}}/rendered", "preview", "A frame rendered")
    image_route(f"{InstancePath}/thumbnail", "thumbnail", "An instance's thumbnail")
    image_route(f"{InstancePath}/frames/{{frames}}/thumbnail", "thumbnail", "A frame's thumbnail")

    @router.get(f"{InstancePath}/bulkdata/{{tail:path}}", summary="A bulk data value")
    async def bulkdata(
        study: Uid,
        series: Uid,
        sop: Uid,
        tail: str,
        request: Request,
        caller: Annotated[Caller, bulk],
    ) -> Response:
        try:
            steps = bulk_path(tail)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=f"bulk data path: {exc}") from None
        if not any(r.matches(MULTIPART) or r.matches(OCTETS) for r in accepts(request)):
            raise not_acceptable(f'{MULTIPART}; type="{OCTETS}"')
        [i] = await find(pool, caller, study, series, sop)
        try:
            async with local_path(storage, i, previews.slot) as path:
                value = await asyncio.to_thread(_bulk_value, path, steps)
        except RenderBusy as exc:
            raise busy(exc) from None
        except (KeyError, IndexError):
            raise HTTPException(status_code=404, detail="no such bulk data") from None
        return multipart_response(_parts([value], OCTETS), OCTETS)

    return router


async def _parts(values: list[bytes], content_type: str):  # type: ignore[no-untyped-def]
    for value in values:
        yield Part(content_type, _one(value))


async def _one(value: bytes):  # type: ignore[no-untyped-def]
    yield value
