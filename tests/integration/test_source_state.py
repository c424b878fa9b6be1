"""State of the Orthanc and ISO sources in the real PostgreSQL: an Orthanc instance is
recorded once however many callers race for it, and folder scanners never take disc tasks."""

from __future__ import annotations

import asyncio

import asyncpg

from libs.db import discs, ledger, orthanc, tasks
from libs.db.ledger import NewFile
from libs.db.orthanc import StagedInstance

SERVER = "http://orthanc.test"
IDS = [f"{n:08x}-00000000-00000000-00000000-00000000" for n in range(5)]


def staged(instance_id: str, caller: int) -> StagedInstance:
    uri = f"file:///staging/{instance_id}.dcm"
    return StagedInstance(instance_id, uri[7:], NewFile("orthanc", uri, "o", 10, f"c{caller}"))


async def test_racing_callers_record_each_instance_once(pool: asyncpg.Pool) -> None:
    async def caller(n: int) -> list[ledger.LedgerRow]:
        async with pool.acquire() as conn:
            return await orthanc.record(conn, SERVER, [staged(i, n) for i in IDS], last_seq=n)

    results = await asyncio.gather(*(caller(n) for n in range(1, 4)))
    assert sorted(len(r) for r in results) == [0, 0, 5]
    assert await pool.fetchval("SELECT count(*) FROM ingest_files") == 5
    async with pool.acquire() as conn:
        assert await orthanc.unknown(conn, SERVER, [*IDS, "new"]) == ["new"]
        assert await orthanc.cursor(conn, SERVER) in (1, 2, 3)
        assert await orthanc.cursor(conn, "http://other") is None


async def test_folder_scanners_never_lease_disc_tasks(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        disc_task = await discs.create_disc(conn, "/inbox/a.iso", "iso")
        assert disc_task is not None
        assert await discs.create_disc(conn, "/inbox/a.iso", "iso") is None  # one open task
        assert await tasks.lease_next_scan(conn, owner="nas", lease_seconds=60) is None
        folder = await tasks.create_task(conn, source_path="/nas/x")
        leased = await tasks.lease_next_scan(conn, owner="nas", lease_seconds=60)
        assert leased is not None and leased.id == folder.id
        [open_disc] = await discs.open_discs(conn)
        assert (open_disc.task_id, open_disc.task_status) == (disc_task, "running")
        assert await ledger.finish_task_scan(conn, disc_task)  # no files: completes at once
        await discs.finalize(conn, disc_task)
        assert await discs.open_discs(conn) == []
        assert await discs.create_disc(conn, "/inbox/a.iso", "iso") is not None  # came again
