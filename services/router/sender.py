"""One destination's queue, sent by C-STORE: a periodic round per destination, under an
advisory lock of its own (one sender per destination across replicas).

A round first settles the instances in doubt (`sending` rows: a sender died between a
C-STORE and its record), then sends the due instances on one association, each recorded
`sending` before its C-STORE and `sent` right after the success.

Failures, and what they delay:
- the destination cannot be reached, rejects the association, aborts it or stops answering
  (or answers "out of resources", 0xA7xx): an outage of that destination. Nothing counts
  against an instance; the destination is backed off (doubling, up to the maximum) and only
  its own queue waits. The instance whose C-STORE got no answer stays `sending` (in doubt).
- the destination refuses one instance (another failure status): that instance is retried
  later with its own backoff, and after `max_attempts` refusals marked `failed` with the
  reason. A SOP class / transfer syntax it did not accept, or a stored copy that is gone,
  fails at once (a retry cannot help; an operator can retry failed instances).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

import structlog

from libs.contracts.errors import PermanentError
from libs.db.routing import QueueItem
from libs.dicom_net.client import NotAccepted
from libs.dicom_net.errors import DicomNetError, FailureStatus
from libs.dicom_net.models import Level, Match, Query
from libs.dicom_net.store import MAX_CONTEXTS, StoreSession
from libs.runtime.logging import get_logger
from libs.runtime.periodic import AT_ONCE, After
from services.router.metrics import RouterMetrics
from services.router.rules import Destination

log = get_logger(__name__)
DEFAULT_SYNTAX = "1.2.840.10008.1.2.1"  # explicit VR little endian, for a file without meta


class RoutesPort(Protocol):
    async def in_doubt(self, destination: str) -> list[QueueItem]: ...
    async def due(self, destination: str, limit: int) -> list[QueueItem]: ...
    async def next_due_in(self, destination: str) -> float | None: ...
    async def sending(self, item: QueueItem) -> None: ...
    async def sent(self, item: QueueItem) -> None: ...
    async def requeue(
        self, item: QueueItem, *, delay_seconds: float, error: str | None, attempt: bool
    ) -> None: ...
    async def failed(self, item: QueueItem, error: str) -> None: ...


class ClientPort(Protocol):
    def storing(self, contexts: Sequence[tuple[str, str]]) -> StoreSession: ...
    async def find(self, query: Query, *, time_limit: float | None = None) -> list[Match]: ...


Files = Callable[[QueueItem], AbstractAsyncContextManager[Path]]


def backoff(attempt: int, base: float, ceiling: float) -> float:
    """Doubling from `base` up to `ceiling`, with equal jitter (half fixed, half random)."""
    top = min(ceiling, base * 2.0 ** max(0, attempt - 1))
    return top / 2 + random.uniform(0, top / 2)  # noqa: S311 - jitter, not crypto


class DestinationDown(Exception):
    """The destination, not an instance, is the problem: back off the whole queue."""


class Sender:
    def __init__(
        self,
        destination: Destination,
        *,
        routes: RoutesPort,
        client: ClientPort,
        files: Files,
        metrics: RouterMetrics,
        stopping: asyncio.Event,
        batch: int,
        max_attempts: int,
        backoff_seconds: float,
        max_backoff_seconds: float,
        poll_seconds: float,
    ) -> None:
        self.destination = destination
        self.name = destination.name
        self._routes = routes
        self._client = client
        self._files = files
        self._metrics = metrics
        self._stopping = stopping
        self._batch = batch
        self._max_attempts = destination.max_attempts or max_attempts
        self._base = backoff_seconds
        self._ceiling = max_backoff_seconds
        self._poll = poll_seconds
        self._outages = 0  # consecutive failed rounds
        self._down_until = 0.0
        metrics.destination_up.labels(self.name).set(1)

    async def round(self) -> After | None:
        """One round; `After` says when to look again."""
        wait = self._down_until - time.monotonic()
        if wait > 0:
            return After(wait)
        try:
            await self.settle_in_doubt()
            items = await self._routes.due(self.name, self._batch)
            if items:
                await self._send(items)
        except (DestinationDown, DicomNetError) as exc:
            return self._down(exc)
        self._up()
        if items and not self._stopping.is_set():
            return AT_ONCE  # more may be due
        later = await self._routes.next_due_in(self.name)
        return After(min(self._poll, later)) if later is not None else None

    def _down(self, exc: BaseException) -> After:
        self._outages += 1
        delay = backoff(self._outages, self._base, self._ceiling)
        self._down_until = time.monotonic() + delay
        self._metrics.destination_up.labels(self.name).set(0)
        log.warning(
            "destination unavailable, backing off",
            destination=self.name,
            error=str(exc),
            outages=self._outages,
            retry_in=round(delay, 1),
        )
        return After(delay)

    def _up(self) -> None:
        if self._outages:
            log.info("destination back", destination=self.name)
        self._outages = 0
        self._metrics.destination_up.labels(self.name).set(1)

    async def settle_in_doubt(self) -> None:
        """Instances a dead sender left `sending`: found at the destination (C-FIND) they are
        recorded sent; otherwise, or without C-FIND, they go back to the queue."""
        for item in await self._routes.in_doubt(self.name):
            self._bind(item)
            if self.destination.verify == "c-find":
                query = Query(
                    level=Level.IMAGE,
                    study_uid=item.study_uid,
                    series_uid=item.series_uid,
                    sop_instance_uid=item.sop_instance_uid,
                )
                found = await self._client.find(query)
                if any(m.sop_instance_uid == item.sop_instance_uid for m in found):
                    await self._routes.sent(item)
                    self._metrics.in_doubt.labels(self.name, "found").inc()
                    log.info("in doubt: found at the destination, not sent again")
                    continue
            self._metrics.in_doubt.labels(self.name, "resent").inc()
            log.warning(
                "in doubt: sending again",
                verified=self.destination.verify == "c-find",
            )
            await self._routes.requeue(
                item, delay_seconds=0, error="in doubt after a restart", attempt=False
            )

    async def _send(self, items: list[QueueItem]) -> None:
        items = _fitting(items)
        contexts = [(i.sop_class_uid, i.transfer_syntax_uid or DEFAULT_SYNTAX) for i in items]
        sent = 0
        started = time.monotonic()
        async with self._client.storing(contexts) as session:
            for item in items:
                if self._stopping.is_set():
                    break
                if await self._send_one(session, item):
                    sent += 1
        structlog.contextvars.unbind_contextvars("correlation_id", "study_uid", "sop_instance_uid")
        log.info(
            "sent",
            destination=self.name,
            instances=sent,
            of=len(items),
            ms=round((time.monotonic() - started) * 1000),
        )

    async def _send_one(self, session: StoreSession, item: QueueItem) -> bool:
        self._bind(item)
        syntax = item.transfer_syntax_uid or DEFAULT_SYNTAX
        try:
            async with self._files(item) as path:
                await self._routes.sending(item)
                started = time.monotonic()
                code = await session.send(path, item.sop_class_uid, syntax)
                self._metrics.store_seconds.labels(self.name).observe(time.monotonic() - started)
        except NotAccepted as exc:
            await self._give_up(item, str(exc), "not_accepted")
            return False
        except PermanentError as exc:  # the stored copy is gone or unreadable
            await self._give_up(item, str(exc), "storage")
            return False
        except FailureStatus as exc:
            if 0xA700 <= exc.code <= 0xA7FF:  # out of resources: the destination is full
                await self._routes.requeue(item, delay_seconds=0, error=str(exc), attempt=False)
                raise DestinationDown(str(exc)) from exc
            await self._refused(item, exc)
            return False
        # AssociationAborted, DicomTimeout: no answer; the row stays `sending` (in doubt).
        await self._routes.sent(item)
        self._metrics.sent.labels(self.name).inc()
        if code:
            log.info("sent with a warning", status=f"0x{code:04X}")
        return True

    async def _refused(self, item: QueueItem, exc: FailureStatus) -> None:
        attempts = item.attempts + 1
        if attempts >= self._max_attempts:
            await self._give_up(item, f"{exc} (after {attempts} attempts)", "refused")
            return
        delay = backoff(attempts, self._base, self._ceiling)
        self._metrics.refused.labels(self.name, f"0x{exc.code:04X}").inc()
        log.warning("refused, retrying later", error=str(exc), retry_in=round(delay, 1))
        await self._routes.requeue(item, delay_seconds=delay, error=str(exc), attempt=True)

    async def _give_up(self, item: QueueItem, reason: str, kind: str) -> None:
        self._metrics.failed.labels(self.name, kind).inc()
        log.error("not forwarded", error=reason, rule=item.rule)
        await self._routes.failed(item, reason)

    def _bind(self, item: QueueItem) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            correlation_id=item.correlation_id,
            study_uid=item.study_uid,
            sop_instance_uid=item.sop_instance_uid,
            destination=self.name,
        )


def _fitting(items: list[QueueItem]) -> list[QueueItem]:
    """The leading items whose (SOP class, syntax) pairs fit one association."""
    pairs: set[tuple[str, str]] = set()
    out = []
    for item in items:
        pair = (item.sop_class_uid, item.transfer_syntax_uid or DEFAULT_SYNTAX)
        if pair not in pairs and len(pairs) == MAX_CONTEXTS:
            break
        pairs.add(pair)
        out.append(item)
    return out
