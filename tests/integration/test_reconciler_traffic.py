"""Recovery under traffic: a file whose event was lost (a publish that failed after the
ledger commit, or the in-memory broker restarting) is re-emitted while a steady stream of
other files keeps reaching outcomes; files still in flight are not."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import asyncpg

from libs.contracts.events import Event, FileDiscovered
from libs.db import ledger
from libs.db.ledger import NewFile
from services.reconciler.bootstrap import PgLedger
from services.reconciler.rounds import reconcile_once
from tests.polling import eventually


def new(n: int) -> NewFile:
    return NewFile("dicom:MODALITY", f"file:///staging/{n}.dcm", "MODALITY", 1, uuid.uuid4().hex)


async def test_lost_work_is_reemitted_under_a_steady_stream(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        [lost] = await ledger.record_discovered(conn, [new(0)])  # its event never sent
    published: list[Event] = []

    async def publish(events: Sequence[Event]) -> None:
        published.extend(events)

    port = PgLedger(pool)
    n = 1
    reemitted: set[int] = set()

    async def one_more_file_then_a_round() -> bool:
        nonlocal n, reemitted
        async with pool.acquire() as conn:  # the stream: a file in, its outcome 0.1 s later
            [row] = await ledger.record_discovered(conn, [new(n)])
            await asyncio.sleep(0.1)
            await ledger.mark_outcome(conn, row.id, "indexed", stage="indexer")
        n += 1
        report = await reconcile_once(
            ledger=port, publish=publish, idle_seconds=60, stale_seconds=1, batch_size=100
        )
        assert not report.idle  # outcomes every 0.1 s: never idle
        reemitted = {e.file.file_id for e in published if isinstance(e, FileDiscovered)}
        return lost.id in reemitted

    await eventually(
        one_more_file_then_a_round, 30, what="the lost file was never re-emitted", interval=0
    )
    assert reemitted == {lost.id}  # the files of the stream, all finished, never were
    async with pool.acquire() as conn:  # a file just discovered, in flight, is not re-emitted
        [fresh] = await ledger.record_discovered(conn, [new(n)])
    await reconcile_once(
        ledger=port, publish=publish, idle_seconds=60, stale_seconds=1, batch_size=100
    )
    assert fresh.id not in {e.file.file_id for e in published if isinstance(e, FileDiscovered)}
