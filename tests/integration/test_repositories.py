"""Dedup claims, the index and the ledger against the real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from libs.contracts.events import (
    DicomHeader,
    FileRef,
    Hashes,
    InstanceAttrs,
    InstanceDuplicated,
    InstanceStored,
    PatientAttrs,
    SeriesAttrs,
    StudyAttrs,
)
from libs.db import dedup, index, index_batch, ledger, tasks
from libs.db.ledger import NewFile


def header(
    sop: str, *, study: str = "1.2.3", series: str = "1.2.3.1", modality: str = "CT"
) -> DicomHeader:
    return DicomHeader(
        patient=PatientAttrs(
            patient_id="P1", patient_name="Иванов^Иван", birth_date="19800229", sex="M"
        ),
        study=StudyAttrs(study_uid=study, study_date="20240115", accession_number="A1"),
        series=SeriesAttrs(series_uid=series, modality=modality, series_number=1),
        instance=InstanceAttrs(sop_instance_uid=sop),
    )


def stored(
    file_id: int,
    sop: str,
    *,
    size: int = 100,
    content: str = "c" * 64,
    disposition: str = "new",
    **kw: str,
) -> InstanceStored:
    return InstanceStored(
        correlation_id=f"corr{file_id}",
        source="nas",
        file=FileRef(file_id=file_id, uri=f"file:///nas/{file_id}.dcm", size=size),
        header=header(sop, **kw),
        hashes=Hashes(file_sha256="f" * 64, content_sha256=content, has_pixels=True),
        disposition=disposition,  # type: ignore[arg-type]
        storage_url=f"file:///store/{sop}.dcm",
    )


async def files(pool: asyncpg.Pool, n: int, task_id: str | None = None) -> list[int]:
    async with pool.acquire() as conn:
        rows = await ledger.record_discovered(
            conn, [NewFile("nas", f"file:///nas/f{i}", "", 1, f"c{i}", task_id) for i in range(n)]
        )
    return [r.id for r in rows]


async def test_dedup_claim_verdicts(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:

        async def claim(sop: str, content: str, file_id: int) -> dedup.Claim:
            return await dedup.claim(
                conn, sop_instance_uid=sop, content_sha256=content, file_id=file_id
            )

        assert (await claim("1.1", "a" * 64, 1)).verdict == "new"
        # Redelivery of the first copy's own discovery: still the first copy, never a duplicate.
        assert (await claim("1.1", "a" * 64, 1)).verdict == "new"
        assert (await claim("1.1", "a" * 64, 2)).verdict == "duplicate"
        conflict = await claim("1.1", "b" * 64, 3)
        assert conflict.verdict == "conflict"
        flagged = await claim("1.2", "a" * 64, 4)
        assert (flagged.verdict, flagged.related_sop_instance_uid) == (
            "same_content_other_uid",
            "1.1",
        )
        # Redeliveries get their first verdict again, whatever was claimed since (a broker
        # restart replays both): the first UID stays new, the later one stays flagged.
        assert (await claim("1.1", "a" * 64, 1)).verdict == "new"
        assert (await claim("1.2", "a" * 64, 4)).verdict == "same_content_other_uid"
        # The original claim is untouched by the conflict.
        assert (
            await conn.fetchval(
                "SELECT content_sha256 FROM dedup_claims WHERE sop_instance_uid = '1.1'"
            )
            == "a" * 64
        )


async def test_concurrent_claims_have_exactly_one_winner(pool: asyncpg.Pool) -> None:
    async def claim(file_id: int) -> str:
        async with pool.acquire() as conn:
            c = await dedup.claim(
                conn, sop_instance_uid="9.9", content_sha256="d" * 64, file_id=file_id
            )
            return c.verdict

    verdicts = await asyncio.gather(*(claim(i) for i in range(1, 9)))
    assert sorted(verdicts) == ["duplicate"] * 7 + ["new"]


async def test_indexing_is_idempotent_and_revisions_are_monotonic(pool: asyncpg.Pool) -> None:
    ids = await files(pool, 3)
    async with pool.acquire() as conn:
        await index.index_instance(conn, stored(ids[0], "1.2.3.1.1", size=100))
        await index.index_instance(conn, stored(ids[0], "1.2.3.1.1", size=100))  # redelivery
        snap = await index.study_snapshot(conn, "1.2.3")
        assert snap is not None
        assert (snap.instance_count, snap.size_bytes, snap.revision) == (1, 100, 1)
        await index.index_instance(
            conn, stored(ids[1], "1.2.3.2.1", size=50, series="1.2.3.2", modality="MR")
        )
        snap = await index.study_snapshot(conn, "1.2.3")
        assert snap is not None
        assert (snap.instance_count, snap.series_count, snap.size_bytes) == (2, 2, 150)
        assert snap.revision == 2 and snap.modalities == ["CT", "MR"]
        assert snap.patient.birth_date == "19800229" and not snap.stable
        assert await conn.fetchval("SELECT name_search FROM patients") == "иванов иван"
        await index.record_duplicate(
            conn,
            InstanceDuplicated(
                correlation_id="d",
                source="nas",
                file=FileRef(file_id=ids[2], uri="file:///nas/copy.dcm", size=100),
                header=header("1.2.3.1.1"),
                hashes=Hashes(file_sha256="f" * 64, content_sha256="c" * 64, has_pixels=True),
            ),
        )
        sources = await conn.fetchval(
            "SELECT count(*) FROM instance_sources WHERE sop_instance_uid = '1.2.3.1.1'"
        )
        assert sources == 2
        statuses = [
            r["status"] for r in await conn.fetch("SELECT status FROM ingest_files ORDER BY id")
        ]
        assert statuses == ["indexed", "indexed", "duplicate"]


async def test_stable_after_quiet_period_with_a_new_revision(pool: asyncpg.Pool) -> None:
    ids = await files(pool, 2)
    async with pool.acquire() as conn:
        await index.index_instance(conn, stored(ids[0], "1.2.3.1.1"))
        assert await index.mark_stable(conn, quiet_seconds=3600, limit=10) == []
        await conn.execute("UPDATE studies SET last_instance_at = now() - interval '1 hour'")
        [snap] = await index.mark_stable(conn, quiet_seconds=60, limit=10)
        assert snap.stable and snap.revision == 2
        assert await index.mark_stable(conn, quiet_seconds=60, limit=10) == []
        # A new instance makes it unstable again, with a higher revision.
        await index.index_instance(conn, stored(ids[1], "1.2.3.1.2"))
        after = await index.study_snapshot(conn, "1.2.3")
        assert after is not None and not after.stable and after.revision == 3


async def test_task_completes_when_the_last_file_finishes(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        task = await tasks.create_task(conn, source_path="/imports/x")
        leased = await tasks.lease_next_scan(conn, owner="me", lease_seconds=60)
        assert leased is not None and leased.id == task.id
        assert await tasks.lease_next_scan(conn, owner="other", lease_seconds=60) is None
    ids = await files(pool, 20, task.id)
    async with pool.acquire() as conn:
        await tasks.finish_scan(conn, task.id)

    async def finish(file_id: int) -> None:
        async with pool.acquire() as conn:
            await ledger.mark_outcome(conn, file_id, "indexed", stage="t")

    await asyncio.gather(*(finish(i) for i in ids))  # concurrently: the last one completes it
    async with pool.acquire() as conn:
        done = await tasks.get_task(conn, task.id)
        assert done is not None and done.status == "completed"
        counters = await tasks.task_counters(conn, task.id)
        assert counters.files_scanned == 20 and counters.new_instances == 20
        # A late duplicate outcome for a finished file changes nothing.
        assert not await ledger.mark_outcome(conn, ids[0], "failed", stage="t", reason="late")


@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "batch"])
async def test_a_zeroed_preamble_and_the_header_json_are_kept_with_the_instance(
    pool: asyncpg.Pool, batched: bool
) -> None:
    """Both ways the indexer writes an instance (one event, a batch) keep what dicomflow
    changed in it and the DICOM JSON header DICOMweb answers metadata from."""
    [clean_id, zeroed_id] = await files(pool, 2)
    clean = stored(clean_id, "1.2.3.1.1")
    clean = clean.model_copy(
        update={"header": clean.header.model_copy(update={"dicom_json": '{"00080060":{}}'})}
    )
    zeroed = stored(zeroed_id, "1.2.3.1.2")
    zeroed = zeroed.model_copy(
        update={"hashes": zeroed.hashes.model_copy(update={"preamble_zeroed": True})}
    )
    async with pool.acquire() as conn:
        if batched:
            await index_batch.index_stored_many(conn, [clean, zeroed])
        else:
            await index.index_instance(conn, clean)
            await index.index_instance(conn, zeroed)
        rows = await conn.fetch(
            """SELECT sop_instance_uid, modifications, dicom_json FROM instances
                ORDER BY sop_instance_uid"""
        )
    assert [tuple(r) for r in rows] == [
        ("1.2.3.1.1", [], '{"00080060":{}}'),
        ("1.2.3.1.2", [index.PREAMBLE_ZEROED], None),
    ]


async def test_a_replayed_dead_letter_brings_its_failed_row_to_its_true_outcome(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        task = await tasks.create_task(conn, source_path="/nas/x")
    [stored_id, dup_id, still_id] = await files(pool, 3, task.id)
    async with pool.acquire() as conn:
        for file_id in (stored_id, dup_id, still_id):  # dead-lettered: the indexer records it
            await ledger.mark_outcome(conn, file_id, "failed", stage="storage-writer", reason="x")
        await index.index_instance(conn, stored(stored_id, "1.2.9.1"))  # replayed, stored
        await index.record_duplicate(  # replayed: a duplicate after all
            conn,
            InstanceDuplicated(
                correlation_id="d",
                source="nas",
                file=FileRef(file_id=dup_id, uri="file:///nas/f1", size=1),
                header=header("1.2.9.1"),
                hashes=Hashes(file_sha256="f" * 64, content_sha256="c" * 64, has_pixels=True),
            ),
        )
        await ledger.mark_outcome(conn, still_id, "failed", stage="extractor", reason="again")
        rows = await conn.fetch("SELECT id, status, stage, reason FROM ingest_files ORDER BY id")
        counters = await tasks.task_counters(conn, task.id)
    assert [(r["status"], r["stage"]) for r in rows] == [
        ("indexed", "indexer"),
        ("duplicate", "indexer"),
        ("failed", "storage-writer"),  # a second failure does not rewrite the first
    ]
    assert counters.new_instances == 1 and counters.duplicates == 1 and counters.failed == 1
