"""PostgreSQL restarted twice in the middle of an import: every stage holds (not ready) and
retries, nothing is dead-lettered, the counts are exact.

The stack runs on a PostgreSQL cluster of this test alone (Debian's server binaries, its own
port and data folder): restarting the shared server would break every other test running."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial

import asyncpg
import pytest
from faults import outcomes_at_least, ready, sources_under, task_finished, verify_storage
from test_resilience import counts
from trees import build_tree

from libs.db.migrations import migrate
from libs.db.pool import create_pool
from load_test.process_stack import PIPELINE, Stack
from tests.polling import eventually
from tests.private_servers import Cluster, private_cluster


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with private_cluster() as c:
        yield c


@pytest.fixture
async def database_url(cluster: Cluster) -> AsyncIterator[str]:
    """The stack's database, on the private cluster (overrides the shared server's)."""
    conn = await asyncpg.connect(f"{cluster.server}/postgres")
    try:
        await conn.execute("CREATE DATABASE faults")
    finally:
        await conn.close()
    yield cluster.url


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Migrated here, on the private cluster (the shared server's template is not on it)."""
    pool = await create_pool(database_url, size=4)
    await migrate(pool)
    yield pool
    await pool.close()


async def test_postgres_restarted_twice_mid_import(
    stack: Stack, pool: asyncpg.Pool, cluster: Cluster
) -> None:
    tree = stack.root / "imports" / "pg-restarts"
    expected = build_tree(tree, patients=2, series_per_study=2, per_series=150, extras=False)
    started = time.monotonic()
    task_id = await stack.start_import(tree)
    restarts = 0
    not_ready: set[str] = set()
    for at in (expected.files // 4, expected.files // 2):
        await eventually(partial(outcomes_at_least, stack, task_id, at), 180, interval=0.05)
        await asyncio.to_thread(cluster.restart)
        restarts += 1
        for name in PIPELINE:  # sampled just after the restart: who noticed it
            if not await ready(stack, name):
                not_ready.add(name)
    task = await eventually(partial(task_finished, stack, task_id), 240, interval=0.5)
    took = time.monotonic() - started
    assert task["status"] == "completed", task
    assert task["counters"]["failed"] == 0, task["counters"]["failures"]
    assert {k: task["counters"][k] for k in expected.counters()} == expected.counters()
    await pool.expire_connections()  # its sessions were terminated by the restarts
    instances, counted, _ = await counts(pool)
    assert instances == counted == expected.new
    assert not await pool.fetchval("SELECT count(*) FROM ingest_files WHERE status <> 'indexed'")
    for name in PIPELINE:
        assert stack.procs[name].poll() is None, f"{name} died:\n{stack.tail(name)}"
    check = await verify_storage(stack, pool, sources_under(tree))
    print(
        f"\nPostgreSQL restarted {restarts}x mid-import: {instances} instances, 0 failed, "
        f"{check.bytes_verified} bytes verified, {took:.0f}s; not ready after a restart: "
        f"{sorted(not_ready)}"
    )
