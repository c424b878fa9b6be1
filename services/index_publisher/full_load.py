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

import structlog
from prometheus_client import CollectorRegistry

from libs.db import index, publications
from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.errors import PermanentError
from libs.events import StudyMetadata, new_id
from libs.logging import configure_logging
from libs.settings import load_settings
from services.index_publisher.bootstrap import publisher
from services.index_publisher.config import IndexPublisherSettings
from services.index_publisher.delivery import ReceiverUnavailable
from services.index_publisher.receiver import HttpReceiver

PAGE = 200
SOURCE = "full-load"


async def _sleep(seconds: float) -> bool:
    await asyncio.sleep(seconds)
    return True


async def publish_all(settings: IndexPublisherSettings, say: Callable[[str], None] = print) -> int:
    url = settings.require_target()
    pool = await create_pool(settings.database_url, size=settings.concurrency + 1)
    receiver = HttpReceiver(settings)
    try:
        await migrate(pool)
        handler, _ = publisher(settings, pool, receiver, registry=CollectorRegistry(), sleep=_sleep)
        run_id = new_id()
        slots = asyncio.Semaphore(settings.concurrency)
        sent = 0
        failed: list[tuple[str, str]] = []

        async def one(study_uid: str) -> None:
            nonlocal sent
            async with slots:
                structlog.contextvars.bind_contextvars(correlation_id=run_id, study_uid=study_uid)
                async with pool.acquire() as conn:
                    snapshot = await index.study_snapshot(conn, study_uid)
                if snapshot is None:
                    return
                event = StudyMetadata(correlation_id=run_id, source=SOURCE, **vars(snapshot))
                attempt = 0
                while True:
                    try:
                        await handler(event, resend=True)
                    except ReceiverUnavailable as exc:
                        attempt += 1
                        wait = min(
                            settings.max_backoff_seconds, settings.backoff_seconds * 2**attempt
                        )
                        say(f"{exc}; retrying {study_uid} in {wait:.1f}s (Ctrl-C stops)")
                        await asyncio.sleep(wait)
                        continue
                    except PermanentError as exc:
                        failed.append((study_uid, str(exc)))
                        return
                    sent += 1
                    return

        after = ""
        while True:
            async with pool.acquire() as conn:
                uids = await publications.study_uids(conn, after=after, limit=PAGE)
            if not uids:
                break
            await asyncio.gather(*(one(uid) for uid in uids))
            after = uids[-1]
            say(f"published {sent} studies, {len(failed)} rejected")
        say(f"done: {sent} studies published to {url}, {len(failed)} rejected")
        for study_uid, reason in failed:
            say(f"  rejected {study_uid}: {reason}")
        return 1 if failed else 0
    finally:
        await receiver.close()
        await pool.close()


def main() -> int:
    settings = load_settings(IndexPublisherSettings)
    configure_logging("index-publisher", settings.log_level)
    try:
        return asyncio.run(publish_all(settings))
    except ValueError as exc:  # configuration: no URL, no center
        print(f"dicomflow publish: {exc}")
        return 2
