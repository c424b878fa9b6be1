"""STOW-RS (PS3.18 §10.5): instances POSTed as multipart/related application/dicom go into
the pipeline with the DICOM receiver's guarantee (permission `imports`).

Each part is streamed to a staging file of our own naming (never a UID from the request),
checked in an isolated parser (the extractor's own `extract_file`: garbage is refused per
instance, with the reason), then the good ones are made durable (one fsync of the staging
filesystem), recorded in the ledger in one INSERT and published on `dicom.discovered.v1`,
all before the answer. The answer is the PS3.18 store response dataset: 200 all stored,
202 some failed, 409 none stored; the reasons of failures also travel in `Warning` headers.
"""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from libs.contracts.errors import PermanentError
from libs.contracts.events import DicomHeader, Event, discovered_event
from libs.db.ledger import NewFile, record_discovered
from libs.dicom.extract import extract_file
from libs.http.auth import Authenticator, Caller
from libs.runtime.logging import get_logger
from libs.runtime.sandbox import IsolatedExecutor
from libs.staging.files import sync_folder, write_async_chunks
from services.api.dicomweb.common import DICOM, DICOM_JSON, Uid, accepts, base_url
from services.api.dicomweb.multipart import (
    MultipartError,
    MultipartReader,
    PartHeaders,
    parse_media_type,
)

log = get_logger(__name__)
Publish = Callable[..., Awaitable[None]]
# FailureReason (0008,1197) values (PS3.18 Table I.2-2).
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
# Not the study of the URL: no standard code (A9xx means the instance does not conform to
# its SOP Class); Table I.2-2 lets an implementation add codes. 0xC409, in "Cannot
# understand", is the one dcm4chee-arc answers (StoreServiceImpl.DIFF_STUDY_INSTANCE_UID).
STUDY_MISMATCH = 0xC409


@dataclass(frozen=True)
class StowLimits:
    staging_dir: Path
    max_instance_bytes: int = 2 << 30
    max_request_bytes: int = 8 << 30
    publish_timeout_seconds: float = 10.0


class TooLarge(Exception):
    pass


@dataclass
class Outcome:
    """One part: stored when `code` is 0, else failed for `reason`; the header when read."""

    path: Path | None = None
    size: int = 0
    header: DicomHeader | None = None
    code: int = 0
    reason: str = ""

    @property
    def stored(self) -> bool:
        return self.code == 0 and self.header is not None

    def fail(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason


@dataclass
class Received:
    """One STOW request: the study its URL names, each part's outcome, bytes taken so far."""

    study: str | None
    outcomes: list[Outcome] = field(default_factory=list)
    received: int = 0


PREAMBLE = b"\0" * 128 + b"DICM"


async def with_preamble(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The part as a PS3.10 file: some clients (dicomweb-client writing a dataset that has
    no preamble) send the file meta group without the 128-byte preamble and `DICM`; it is
    put back, as the receiver writes one before what a C-STORE carries."""
    head = b""
    async for chunk in chunks:
        if len(head) >= 132:
            yield chunk
            continue
        head += chunk
        if len(head) >= 132:
            yield _fixed(head)
    if len(head) < 132:
        yield _fixed(head)


def _fixed(head: bytes) -> bytes:
    if head[128:132] != b"DICM" and head[:2] == b"\x02\x00" and head[4:6].isalpha():
        return PREAMBLE + head  # group 0002, explicit VR: a file meta group without preamble
    return head


def stow_router(
    pool: asyncpg.Pool,
    auth: Authenticator,
    executor: IsolatedExecutor,
    publish: Publish,
    limits: StowLimits,
) -> APIRouter:
    router = APIRouter(tags=["DICOMweb"])
    storer = Depends(auth.require("imports", "dicomweb.store"))

    async def stage(req: Received, headers: PartHeaders, chunks: AsyncIterator[bytes]) -> None:
        outcome = Outcome()
        req.outcomes.append(outcome)
        kind = parse_media_type(headers.content_type).media_type if headers.content_type else DICOM
        if kind != DICOM:
            outcome.fail(CANNOT_UNDERSTAND, f"part is {kind}, not {DICOM}")
            return
        folder = limits.staging_dir / datetime.now(UTC).strftime("%Y%m%d%H")
        path = folder / f"{uuid.uuid4().hex}.dcm"
        cap = min(limits.max_instance_bytes, limits.max_request_bytes - req.received)

        async def capped() -> AsyncIterator[bytes]:
            size = 0
            async for chunk in with_preamble(chunks):
                size += len(chunk)
                if size > cap:
                    raise TooLarge
                yield chunk

        try:
            outcome.size = await write_async_chunks(path, capped(), durable=False)
        except TooLarge:
            outcome.fail(OUT_OF_RESOURCES, f"larger than the {cap} bytes it may take")
            return
        req.received += outcome.size
        outcome.path = path
        try:
            header, _ = await executor.run(extract_file, str(path))
        except PermanentError as exc:  # not DICOM, malformed, truncated, parser killed
            outcome.fail(CANNOT_UNDERSTAND, str(exc))
        else:
            outcome.header = header
            study = header.study.study_uid
            if req.study is not None and study != req.study:
                outcome.fail(STUDY_MISMATCH, f"its StudyInstanceUID {study} is not the URL's")
        if not outcome.stored:  # nothing will name it: it goes now
            path.unlink(missing_ok=True)

    async def commit(req: Received, request: Request, caller: Caller) -> None:
        good = [o for o in req.outcomes if o.stored and o.path is not None]
        if not good:
            return
        client = request.client.host if request.client else "?"
        correlation = uuid.uuid4().hex
        files = [
            NewFile("stow", o.path.as_uri(), f"{client} {caller.created_by}", o.size, correlation)
            for o in good
            if o.path is not None
        ]
        try:
            await asyncio.to_thread(sync_folder, limits.staging_dir)
            async with pool.acquire() as conn:
                rows = await record_discovered(conn, files)
            events: list[Event] = [discovered_event(r) for r in rows]
            async with asyncio.timeout(limits.publish_timeout_seconds):
                await publish(*events)
        except Exception as exc:  # recorded ones are re-published by the reconciler
            log.warning("stow commit failed", instances=len(good), error=repr(exc))
            for o in good:
                o.fail(OUT_OF_RESOURCES, "could not be recorded or published; send it again")

    async def store(request: Request, caller: Caller, study: str | None) -> Response:
        ctype = parse_media_type(request.headers.get("content-type", ""))
        if ctype.media_type != "multipart/related" or ctype.params.get("type", DICOM) != DICOM:
            raise HTTPException(
                status_code=415, detail=f'expected multipart/related; type="{DICOM}"'
            )
        if not any(
            r.matches(DICOM_JSON) or r.matches("application/json") for r in accepts(request)
        ):
            raise HTTPException(status_code=406, detail=f"the answer is {DICOM_JSON}")
        req = Received(study)
        reader = MultipartReader(request.stream(), ctype.params.get("boundary", ""))
        try:
            await reader.parts(lambda h, c: stage(req, h, c))
        except MultipartError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        if not req.outcomes:
            raise HTTPException(status_code=400, detail="the request holds no instance")
        await commit(req, request, caller)
        caller.saw(sum(1 for o in req.outcomes if o.stored))
        return _answer(req, base_url(request))

    @router.post("/studies", summary="Store instances")
    async def store_any(request: Request, caller: Annotated[Caller, storer]) -> Response:
        return await store(request, caller, None)

    @router.post("/studies/{study}", summary="Store instances of one study")
    async def store_study(
        study: Uid, request: Request, caller: Annotated[Caller, storer]
    ) -> Response:
        return await store(request, caller, study)

    return router


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _reference(o: Outcome, base: str) -> dict[str, Any]:
    h = o.header
    sop_class = h.instance.sop_class_uid if h else ""
    sop = h.instance.sop_instance_uid if h else ""
    item = {"00081150": _ui(sop_class), "00081155": _ui(sop)}
    if o.stored and h is not None:
        url = f"{base}/studies/{h.study.study_uid}/series/{h.series.series_uid}/instances/{sop}"
        item["00081190"] = {"vr": "UR", "Value": [url]}
    else:
        item["00081197"] = {"vr": "US", "Value": [o.code]}
    return item


def _answer(req: Received, base: str) -> Response:
    stored = [_reference(o, base) for o in req.outcomes if o.stored]
    failed = [_reference(o, base) for o in req.outcomes if not o.stored]
    # RetrieveURL is Type 2 (PS3.18 Table I.1-1): the study's URL when the request named one
    # study or everything stored belongs to one, else present and empty.
    studies = {o.header.study.study_uid for o in req.outcomes if o.stored and o.header}
    study = req.study or (studies.pop() if len(studies) == 1 else None)
    body: dict[str, Any] = {
        "00081190": {"vr": "UR", "Value": [f"{base}/studies/{study}"]} if study else {"vr": "UR"}
    }
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": stored}
    status = 200 if not failed else 202 if stored else 409
    reasons = [
        f'299 dicomflow: "part {n}: {o.reason}"'
        for n, o in enumerate(req.outcomes, start=1)
        if not o.stored
    ]
    headers = {}
    if reasons:  # header values are latin-1: anything else is replaced
        text = ", ".join(reasons).replace("\n", " ")
        headers["Warning"] = text.encode("ascii", "replace").decode()
    body_bytes = json.dumps(body, ensure_ascii=False).encode()
    return Response(body_bytes, status_code=status, media_type=DICOM_JSON, headers=headers)
