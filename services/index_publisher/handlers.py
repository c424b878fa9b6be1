"""Deliver each study revision from `dicom.metadata.v1` to the central index, in order, once.

The study's publication row is locked while it is delivered: the stale check, the POST and
the record of what was delivered are one step for every other sender of the same study.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from libs.contracts.events import Event, StudyMetadata
from libs.http.delivery import Answer
from libs.runtime.logging import get_logger
from services.index_publisher.payload import StudyKeys, idempotency_key

log = get_logger(__name__)

Render = Callable[[StudyMetadata, StudyKeys, str], dict[str, Any]]
Deliver = Callable[[bytes, dict[str, str]], Awaitable[Answer]]


class Claim(Protocol):
    keys: StudyKeys
    delivered_revision: int

    async def delivered(self, revision: int) -> None: ...


class PublicationsPort(Protocol):
    def claim(self, study_uid: str) -> AbstractAsyncContextManager[Claim]: ...


async def handle_metadata(
    event: StudyMetadata,
    *,
    publications: PublicationsPort,
    deliver: Deliver,
    render: Render,
    center: str,
    idempotency_header: str,
    resend: bool = False,
) -> list[Event]:
    """`resend` (the full load) sends a revision the receiver may already have; never one
    older than what was delivered."""
    async with publications.claim(event.study_uid) as claim:
        done = claim.delivered_revision
        if done > event.revision or (done == event.revision and not resend):
            log.info("stale revision skipped", revision=event.revision, delivered=done)
            return []
        body = json.dumps(render(event, claim.keys, center), ensure_ascii=False).encode()
        headers = {
            idempotency_header: idempotency_key(center, event),
            "X-Correlation-Id": event.correlation_id,
        }
        answer = await deliver(body, headers)
        await claim.delivered(event.revision)
    log.info("delivered", revision=event.revision, answer=answer.describe())
    return []
