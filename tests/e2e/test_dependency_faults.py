"""Dependencies away mid-import, the pipeline as processes: a storage filesystem that fills
up, and a broker restarted under a continuous C-STORE stream. Each is held and retried
(the service turns not-ready), never dead-lettered; nothing is lost."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import asyncpg
import pytest
from faults import (
    RECEIVER,
    Sender,
    outcomes_at_least,
    ready,
    receiver_env,
    sources_under,
    task_finished,
    verify_storage,
)
from test_resilience import counts
from trees import build_tree

from libs.kafka.dlq import list_letters
from libs.tools.dev_broker import free_port
from load_test.process_stack import Stack
from tests.polling import eventually
from tests.private_servers import small_filesystem


@pytest.fixture
def small_disk() -> Iterator[Path]:
    with small_filesystem("64m") as folder:
        yield folder


@pytest.fixture
def extra_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.node.name.startswith("test_storage_fills"):
        disk: Path = request.getfixturevalue("small_disk")
        return {"STORAGE_URL": (disk / "storage").as_uri()}
    return receiver_env(tmp_path, free_port())


async def not_ready(stack: Stack, name: str) -> bool:
    return not await ready(stack, name)


async def test_storage_fills_mid_import_then_space_is_freed(
    stack: Stack, pool: asyncpg.Pool, small_disk: Path, broker: object
) -> None:
    """A 64 MiB tmpfs holds the storage; a filler leaves room for about a third of the
    import. The storage-writer must turn not-ready and wait (no failure, no dead letter);
    once the filler is deleted every instance is stored, byte for byte."""
    tree = stack.root / "imports" / "full-disk"
    expected = build_tree(tree, patients=2, series_per_study=2, per_series=150, extras=False)
    (small_disk / "storage").mkdir(exist_ok=True)
    stat = os.statvfs(small_disk)
    room = expected.new // 3 * stat.f_bsize  # each small instance takes one page
    filler = small_disk / "filler"
    with filler.open("wb") as f:
        f.truncate(0)
        f.write(b"\0" * (stat.f_bavail * stat.f_frsize - room))
    task_id = await stack.start_import(tree)
    await eventually(
        partial(not_ready, stack, "storage-writer"), 120, what=partial(stack.tail, "storage-writer")
    )
    stored_when_full = len(list((small_disk / "storage").rglob("*.dcm")))
    task = await stack.task(task_id)
    assert task["status"] != "completed" and task["counters"]["failed"] == 0, task
    assert 0 < stored_when_full < expected.new
    await eventually(  # held: several seconds of retries, far past a poison message's
        partial(seconds_passed, time.monotonic() + 5), 10, interval=0.5
    )
    assert (await stack.task(task_id))["counters"]["failed"] == 0
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    assert await list_letters(bootstrap, "dicom.unique.v1") == [], "a full disk dead-lettered"
    filler.unlink()  # space freed
    task = await eventually(partial(task_finished, stack, task_id), 180, interval=0.5)
    assert task["status"] == "completed", task
    assert {k: task["counters"][k] for k in expected.counters()} == expected.counters()
    assert await ready(stack, "storage-writer")
    instances, counted, _ = await counts(pool)
    assert instances == counted == expected.new
    check = await verify_storage(stack, pool, sources_under(tree))
    # No temp file left behind (the storage's own `.partial/` folder stays, empty).
    leftovers = [p for p in (small_disk / "storage").rglob("*") if p.is_file()]
    assert not [p for p in leftovers if p.name.startswith(".") or ".partial" in p.parts]
    print(
        f"\nfull disk: {stored_when_full} of {expected.new} stored when it filled, all after;"
        f" {check.bytes_verified} bytes verified"
    )


def seconds_passed(at: float) -> bool:
    return time.monotonic() >= at


async def all_indexed(pool: asyncpg.Pool, sops: set[str]) -> bool:
    rows = await pool.fetch(
        "SELECT sop_instance_uid FROM instances WHERE sop_instance_uid = ANY($1::text[])",
        list(sops),
    )
    return len(rows) == len(sops)


async def no_pending(pool: asyncpg.Pool) -> bool:
    return not await pool.fetchval("SELECT count(*) FROM ingest_files WHERE status = 'pending'")


async def acked_at_least(sender: Sender, n: int) -> bool:
    assert sender.error is None, sender.error
    return len(sender.acked) >= n


async def test_broker_restart_under_a_c_store_stream(
    stack: Stack, pool: asyncpg.Pool, broker: object, tmp_path: Path
) -> None:
    """C-STORE keeps arriving while the broker restarts (the in-memory broker forgets every
    message) and a folder import is under way: every acknowledged instance is indexed, the
    import task completes with exact counts."""
    stack.start(RECEIVER)
    await stack.wait_ready([RECEIVER])
    tree = stack.root / "imports" / "stream"
    expected = build_tree(tree, patients=2, per_series=60, extras=False)
    sender = Sender(int(stack.env["RECEIVER_PORT"]), tmp_path / "sent")
    sender.start()
    try:
        await eventually(partial(acked_at_least, sender, 30), 120)
        task_id = await stack.start_import(tree)
        await eventually(partial(outcomes_at_least, stack, task_id, 20), 120, interval=0.05)
        acked_before = len(sender.acked)
        broker.restart()  # type: ignore[attr-defined]
        await eventually(partial(acked_at_least, sender, acked_before + 60), 180)
    finally:
        acked = sender.stop()
    task = await eventually(partial(task_finished, stack, task_id), 240, interval=0.5)
    assert task["status"] == "completed", task
    assert {k: task["counters"][k] for k in expected.counters()} == expected.counters()
    await eventually(
        partial(all_indexed, pool, set(acked)), 240, what=partial(stack.tail, "reconciler")
    )
    # A copy whose first delivery was lost with the broker stays pending until the reconciler
    # re-emits it (then it is found a duplicate): wait for that, it is part of the recovery.
    await eventually(partial(no_pending, pool), 120, what=partial(stack.tail, "reconciler"))
    instances, counted, _ = await counts(pool)
    assert instances == counted == expected.new + len(acked)
    statuses = await pool.fetch("SELECT status, count(*) AS n FROM ingest_files GROUP BY 1")
    assert {r["status"] for r in statuses} <= {"indexed", "duplicate"}, statuses
    check = await verify_storage(stack, pool, {**sources_under(tree), **acked}, sent=set(acked))
    print(
        f"\nbroker restarted under C-STORE: {len(acked)} acknowledged ({acked_before} before"
        f" the restart, {sender.retries} resends), all indexed; {check.bytes_verified} bytes"
        " verified"
    )
