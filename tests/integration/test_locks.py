"""Advisory locks with named namespaces in the real PostgreSQL: one reader per thing."""

from __future__ import annotations

import asyncio

import asyncpg

from libs.db.locks import LockSpace, SingleReader, lock_for_transaction


async def test_one_reader_per_thing_across_replicas(pool: asyncpg.Pool) -> None:
    root = SingleReader(pool, LockSpace.NAS_ROOT, "/nas/a")
    async with root.held() as first:
        async with root.held() as second:  # another session: another replica
            assert (first, second) == (True, False)
        async with SingleReader(pool, LockSpace.NAS_ROOT, "/nas/b").held() as other_root:
            assert other_root
        async with SingleReader(pool, LockSpace.ISO_INBOX, "/nas/a").held() as other_space:
            assert other_space
    async with root.held() as again:  # released with the block
        assert again


async def test_a_transaction_lock_waits_for_the_holder(pool: asyncpg.Pool) -> None:
    order: list[str] = []
    holding = asyncio.Event()

    async def holder() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await lock_for_transaction(conn, LockSpace.ORTHANC_SERVER, "http://orthanc")
            holding.set()
            await asyncio.sleep(0.2)
            order.append("holder")

    async def waiter() -> None:
        await holding.wait()
        async with pool.acquire() as conn, conn.transaction():
            await lock_for_transaction(conn, LockSpace.ORTHANC_SERVER, "http://orthanc")
            order.append("waiter")

    await asyncio.gather(holder(), waiter())
    assert order == ["holder", "waiter"]
