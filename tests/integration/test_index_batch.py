"""Dedup claims and the index written a batch at a time, against the real PostgreSQL: the
same verdicts and counts as one event at a time, idempotent on redelivery, and two writers
with overlapping batches (two indexer replicas) neither deadlock nor count twice."""

from __future__ import annotations

import asyncio

import asyncpg

from libs.contracts.events import FileRef, Hashes, InstanceDuplicated, InstanceStored
from libs.db import dedup, index, index_batch, ledger, tasks
from libs.db.dedup import ClaimRequest
from tests.integration.test_repositories import files, header, stored


async def test_claims_of_a_batch_are_judged_as_one_after_the_other(pool: asyncpg.Pool) -> None:
    batch = [
        ClaimRequest("1.1", "a" * 64, 1),
        ClaimRequest("1.1", "a" * 64, 1),  # the same discovery twice in the batch
        ClaimRequest("1.1", "a" * 64, 2),
        ClaimRequest("1.1", "b" * 64, 3),
        ClaimRequest("1.2", "a" * 64, 4),
        ClaimRequest("1.0", "e" * 64, 5),
    ]
    expected = [
        ("new", None),
        ("new", None),
        ("duplicate", "1.1"),
        ("conflict", "1.1"),
        ("same_content_other_uid", "1.1"),
        ("new", None),
    ]
    async with pool.acquire() as conn:
        got = await dedup.claim_many(conn, batch)
        assert [(c.verdict, c.related_sop_instance_uid) for c in got] == expected
        again = await dedup.claim_many(conn, list(reversed(batch)))  # redelivered, any order
        assert [(c.verdict, c.related_sop_instance_uid) for c in again] == expected[::-1]
        # One by one agrees with the batch.
        one = await dedup.claim(conn, sop_instance_uid="1.2", content_sha256="a" * 64, file_id=4)
        assert (one.verdict, one.related_sop_instance_uid) == ("same_content_other_uid", "1.1")


async def test_a_batch_indexes_as_one_event_at_a_time(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        task = await tasks.create_task(conn, source_path="/imports/x")
        assert await tasks.lease_next_scan(conn, owner="me", lease_seconds=60) is not None
    ids = await files(pool, 5, task.id)
    async with pool.acquire() as conn:
        await tasks.finish_scan(conn, task.id)
    batch = [
        stored(ids[0], "1.2.3.1.1", size=100),
        stored(ids[1], "1.2.3.1.2", size=10),
        stored(ids[0], "1.2.3.1.1", size=100),  # redelivered within the batch
        stored(ids[2], "1.2.3.2.1", size=50, series="1.2.3.2", modality="MR"),
        stored(ids[3], "1.2.3.1.1", content="b" * 64, disposition="conflict"),
    ]
    batch = [e.model_copy(update={"file": e.file.model_copy(update={"task_id": task.id})})
             for e in batch]  # fmt: skip
    async with pool.acquire() as conn:
        done = await index_batch.index_stored_many(conn, batch)
        assert [x is not None for x in done.latencies] == [True, True, False, True, True]
        snap = done.snapshots["1.2.3"]
        assert (snap.instance_count, snap.series_count, snap.size_bytes) == (3, 2, 160)
        assert snap.modalities == ["CT", "MR"] and snap.revision == 1 and not snap.stable
        assert snap == await index.study_snapshot(conn, "1.2.3")
        counts = await conn.fetch(
            "SELECT series_uid, instance_count, size_bytes FROM series ORDER BY 1"
        )
        assert [tuple(r) for r in counts] == [("1.2.3.1", 2, 110), ("1.2.3.2", 1, 50)]
        assert await conn.fetchval("SELECT count(*) FROM conflicts") == 1
        assert await conn.fetchval("SELECT name_search FROM patients") == "иванов иван"

        again = await index_batch.index_stored_many(conn, batch)  # the batch redelivered
        assert again.latencies == [None] * 5
        assert again.snapshots["1.2.3"] == snap, "nothing counted twice, no new revision"

        dup = InstanceDuplicated(
            correlation_id="d",
            source="nas",
            file=FileRef(file_id=ids[4], uri="file:///nas/copy.dcm", size=100, task_id=task.id),
            header=header("1.2.3.1.1"),
            hashes=Hashes(file_sha256="f" * 64, content_sha256="c" * 64, has_pixels=True),
        )
        [seconds] = await index_batch.record_duplicates_many(conn, [dup])
        assert seconds is not None
        statuses = [r[0] for r in await conn.fetch("SELECT status FROM ingest_files ORDER BY id")]
        assert statuses == ["indexed", "indexed", "indexed", "conflict", "duplicate"]
        finished = await tasks.get_task(conn, task.id)
        assert finished is not None and finished.status == "completed"


async def test_replayed_dead_letters_bring_their_failed_rows_to_their_true_outcome(
    pool: asyncpg.Pool,
) -> None:
    """The batch path (the indexer's): a dead letter replayed once its cause is fixed ends
    as what really happened to its file, and the task's counters move with it."""
    async with pool.acquire() as conn:
        task = await tasks.create_task(conn, source_path="/imports/x")
        assert await tasks.lease_next_scan(conn, owner="me", lease_seconds=60) is not None
    [stored_id, dup_id, still_id] = await files(pool, 3, task.id)
    async with pool.acquire() as conn:
        await tasks.finish_scan(conn, task.id)
        for file_id in (stored_id, dup_id, still_id):  # dead-lettered: the indexer records it
            await ledger.mark_outcome(conn, file_id, "failed", stage="storage-writer", reason="x")
        before = await tasks.task_counters(conn, task.id)
        assert (before.failed, before.new_instances, before.patients_new) == (3, 0, 0)
        ended = await tasks.get_task(conn, task.id)
        assert ended is not None and ended.status == "completed"

        replayed = stored(stored_id, "1.2.9.1").model_copy(
            update={"file": FileRef(file_id=stored_id, uri="file:///nas/f0", size=1,
                                    task_id=task.id)}
        )  # fmt: skip
        done = await index_batch.index_stored_many(conn, [replayed])
        assert done.latencies[0] is not None, "the replay recorded the file's outcome"
        dup = InstanceDuplicated(
            correlation_id="d",
            source="nas",
            file=FileRef(file_id=dup_id, uri="file:///nas/f1", size=1, task_id=task.id),
            header=header("1.2.9.1"),
            hashes=Hashes(file_sha256="f" * 64, content_sha256="c" * 64, has_pixels=True),
        )
        [seconds] = await index_batch.record_duplicates_many(conn, [dup])
        assert seconds is not None
        async with conn.transaction():  # a second failure does not rewrite the first
            again = ledger.Outcome(still_id, "failed", "again", None, None, task.id)
            assert await ledger.mark_outcomes(conn, [again], stage="extractor") == {}
        rows = await conn.fetch("SELECT status, stage, reason FROM ingest_files ORDER BY id")
        after = await tasks.task_counters(conn, task.id)
        assert await conn.fetchval("SELECT count(*) FROM instances") == 1
    assert [tuple(r) for r in rows] == [
        ("indexed", "indexer", None),
        ("duplicate", "indexer", None),
        ("failed", "storage-writer", "x"),
    ]
    assert (after.failed, after.new_instances, after.duplicates, after.pending) == (1, 1, 1, 0)
    assert after.patients_new == 1 and after.patients_found == 1
    assert [f["uri"] for f in after.failures] == ["file:///nas/f2"]


async def test_pending_only_outcomes_leave_a_failed_row_as_it_is(pool: asyncpg.Pool) -> None:
    """The dcm4chee watcher's C-MOVE links write a round's row once: `pending_only`."""
    [file_id] = await files(pool, 1)
    async with pool.acquire() as conn:
        await ledger.mark_outcome(conn, file_id, "failed", stage="dcm4chee-watcher", reason="x")
        async with conn.transaction():
            late = ledger.Outcome(file_id, "indexed", None, "1.2.9.1", "1.2.9", None)
            got = await ledger.mark_outcomes(conn, [late], stage="t", pending_only=True)
        assert got == {}
        assert await conn.fetchval("SELECT status FROM ingest_files") == "failed"


async def test_two_writers_with_overlapping_batches(pool: asyncpg.Pool) -> None:
    ids = await files(pool, 40)
    events = [
        stored(ids[n], f"1.9.{n % 4}.{n}", size=1, study=f"1.9.{n % 4}", series=f"1.9.{n % 4}.1")
        for n in range(40)
    ]

    async def write(batch: list[InstanceStored]) -> None:
        async with pool.acquire() as conn:
            await index_batch.index_stored_many(conn, batch)

    # Each half in a different order, every study in both: as two replicas after a rebalance.
    await asyncio.gather(write(events[:30]), write(list(reversed(events[10:]))))
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT instance_count FROM studies ORDER BY study_uid")
        assert [r[0] for r in rows] == [10, 10, 10, 10]
        assert await conn.fetchval("SELECT count(*) FROM instances") == 40


async def test_a_studys_modalities_are_in_code_order_whatever_order_series_arrive(
    pool: asyncpg.Pool,
) -> None:
    """What a study list shows ("CT, MR") must not depend on which series the pipeline
    happened to index first; `rebuild-index` sorts them too."""
    ids = await files(pool, 6)
    mr = stored(ids[0], "5.1.1", study="5.1", series="5.1.2", modality="MR")
    sr = stored(ids[1], "5.1.3", study="5.1", series="5.1.3", modality="SR")
    ct = stored(ids[2], "5.1.4", study="5.1", series="5.1.4", modality="CT")
    async with pool.acquire() as conn:
        await index_batch.index_stored_many(conn, [mr])
        done = await index_batch.index_stored_many(conn, [sr, ct])  # batch path
        assert done.snapshots["5.1"].modalities == ["CT", "MR", "SR"]
        for event in [  # one event at a time
            stored(ids[3], "5.2.1", study="5.2", series="5.2.1", modality="MR"),
            stored(ids[4], "5.2.2", study="5.2", series="5.2.2", modality="CT"),
            stored(ids[5], "5.2.3", study="5.2", series="5.2.1", modality="MR"),
        ]:
            await index.index_instance(conn, event)
        snap = await index.study_snapshot(conn, "5.2")
        assert snap is not None and snap.modalities == ["CT", "MR"]
