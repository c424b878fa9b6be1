"""`dicomflow publish --all`: every study in the index to a new central index.

Each study's current state is read from PostgreSQL and goes through the same handler as the
live consumer (same payload, idempotency key, retries and per-study lock), as a resend: a
revision the receiver may already hold is sent again, an older one than was delivered never
is. Safe to run while the publisher runs, and to re-run (the receiver deduplicates by key).
During an outage it waits and retries the study in hand; rejected studies are listed at the
end and make the exit code 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import structlog
from prometheus_client import CollectorRegistry

from libs.contracts.errors import PermanentError
from libs.contracts.events import StudyMetadata, new_id
from libs.contracts.settings import load_settings
from libs.db import index, publications
from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.http.delivery import ReceiverUnavailable
from libs.runtime.logging import configure_logging
from services.index_publisher.bootstrap import PublishHandler, publisher
from services.index_publisher.config import IndexPublisherSettings
from services.index_publisher.http_client import CentralIndexClient

PAGE = 200
SOURCE = "full-load"


async def _sleep(seconds: float) -> bool:
    await asyncio.sleep(seconds)
    return True


class FullLoad:
    def __init__(
        self,
        settings: IndexPublisherSettings,
        pool: asyncpg.Pool,
        handler: PublishHandler,
        say: Callable[[str], None],
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._handler = handler
        self._say = say
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._run_id = new_id()
        self.sent = 0
        self.failed: list[tuple[str, str]] = []

    async def run(self) -> None:
        after = ""
        while True:
            async with self._pool.acquire() as conn:
                uids = await publications.study_uids(conn, after=after, limit=PAGE)
            if not uids:
                return
            await asyncio.gather(*(self.study(uid) for uid in uids))
            after = uids[-1]
            self._say(f"published {self.sent} studies, {len(self.failed)} rejected")

    async def study(self, study_uid: str) -> None:
        async with self._slots:
            structlog.contextvars.bind_contextvars(correlation_id=self._run_id, study_uid=study_uid)
            async with self._pool.acquire() as conn:
                snapshot = await index.study_snapshot(conn, study_uid)
            if snapshot is None:
                return
            await self._deliver(
                StudyMetadata(correlation_id=self._run_id, source=SOURCE, **vars(snapshot))
            )

    async def _deliver(self, event: StudyMetadata) -> None:
        """Until the receiver answers for it: an outage is waited out, not skipped."""
        s = self._settings
        attempt = 0
        while True:
            try:
                await self._handler(event, resend=True)
            except ReceiverUnavailable as exc:
                attempt += 1
                wait = min(s.max_backoff_seconds, s.backoff_seconds * 2**attempt)
                self._say(f"{exc}; retrying {event.study_uid} in {wait:.1f}s (Ctrl-C stops)")
                await asyncio.sleep(wait)
                continue
            except PermanentError as exc:
                self.failed.append((event.study_uid, str(exc)))
                return
            self.sent += 1
            return


async def publish_all(settings: IndexPublisherSettings, say: Callable[[str], None] = print) -> int:
    url = settings.require_target()
    pool = await create_pool(settings.database_url, size=settings.concurrency + 1)
    receiver = CentralIndexClient(settings)
    try:
        await migrate(pool)
        handler, _ = publisher(settings, pool, receiver, registry=CollectorRegistry(), sleep=_sleep)
        load = FullLoad(settings, pool, handler, say)
        await load.run()
    finally:
        await receiver.close()
        await pool.close()
    say(f"done: {load.sent} studies published to {url}, {len(load.failed)} rejected")
    for study_uid, reason in load.failed:
        say(f"  rejected {study_uid}: {reason}")
    return 1 if load.failed else 0


def main() -> int:
    settings = load_settings(IndexPublisherSettings)
    configure_logging("index-publisher", settings.log_level)
    try:
        return asyncio.run(publish_all(settings))
    except ValueError as exc:  # configuration: no URL, no center
        print(f"dicomflow publish: {exc}")
        return 2
