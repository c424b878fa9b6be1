"""Header corrections (issue 17, item 8): the same SOPInstanceUID with the same pixels but a
corrected header (patient name, a patient merge) is a new revision of the instance and its
study, not a duplicate. Real files, extractor, dedup, storage-writer and indexer handlers
against PostgreSQL and local storage (no broker: the events are passed by hand)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from prometheus_client import Histogram

from libs.contracts.events import (
    FileRef,
    InstanceDuplicated,
    InstanceExtracted,
    InstanceStored,
    InstanceUnique,
    StudyMetadata,
)
from libs.db import index, search, tasks
from libs.dicom.extract import extract_file
from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from libs.storage.local import LocalStore
from services.dedup.bootstrap import make_claim_many
from services.dedup.handlers import handle_extracted_batch
from services.indexer.bootstrap import PgIndex
from services.indexer.handlers import handle_stored_batch
from services.storage_writer.handlers import handle_unique_batch
from tests.integration.test_repositories import files

STUDY, SERIES, SOP = (synthetic_uid(f"revision-{n}") for n in ("study", "series", "sop"))


def _write(path: Path, name: str, patient_id: str = "P-REV") -> Path:
    ds = make_dataset(
        patient_id=patient_id,
        patient_name=name,
        study_uid=STUDY,
        series_uid=SERIES,
        sop_uid=SOP,
        rows=16,
        columns=16,
    )
    write_instance(path, ds)
    return path


def _extracted(path: Path, file_id: int) -> InstanceExtracted:
    header, hashes = extract_file(str(path))
    return InstanceExtracted(
        correlation_id=f"corr-{file_id}",
        source="nas",
        file=FileRef(file_id=file_id, uri=path.as_uri(), size=path.stat().st_size),
        header=header,
        hashes=hashes,
    )


class Pipeline:
    def __init__(self, pool: asyncpg.Pool, storage: LocalStore) -> None:
        self.claim_many = make_claim_many(pool)
        self.storage = storage
        self.index = PgIndex(pool, Histogram("t", "t", ["outcome"], registry=None))
        self.announced: list[StudyMetadata] = []

    async def run(self, event: InstanceExtracted) -> InstanceUnique | InstanceDuplicated:
        """One file through dedup, storage and the index; returns dedup's verdict."""
        (verdict,) = (await handle_extracted_batch([event], claim_many=self.claim_many))[0]
        assert isinstance(verdict, InstanceUnique | InstanceDuplicated)
        if isinstance(verdict, InstanceUnique):
            (out,) = await handle_unique_batch([verdict], storage=self.storage)
            assert isinstance(out, list), out
            (stored,) = out
            assert isinstance(stored, InstanceStored)
            for events in await handle_stored_batch([stored], index=self.index):
                self.announced += [e for e in events if isinstance(e, StudyMetadata)]
        else:
            await self.index.duplicates_many([verdict])
        return verdict


async def test_a_corrected_header_is_a_new_revision_and_the_original_is_kept(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    storage = LocalStore((tmp_path / "storage").as_uri())
    pipeline = Pipeline(pool, storage)
    original = _write(tmp_path / "original.dcm", "Ivanov^Ivan")
    corrected = _write(tmp_path / "corrected.dcm", "Ivanova^Anna")
    copy_of_corrected = tmp_path / "copy.dcm"
    copy_of_corrected.write_bytes(corrected.read_bytes())
    async with pool.acquire() as conn:
        task = await tasks.create_task(conn, source_path="/imports/corrections")
    ids = await files(pool, 4, task.id)
    first, second = _extracted(original, ids[0]), _extracted(corrected, ids[1])
    assert first.hashes.content_sha256 == second.hashes.content_sha256  # same pixels
    assert first.hashes.file_sha256 != second.hashes.file_sha256

    assert isinstance(await pipeline.run(first), InstanceUnique)
    verdict = await pipeline.run(second)
    assert isinstance(verdict, InstanceUnique), "a correction is not a duplicate"
    assert verdict.disposition == "revision"

    async with pool.acquire() as conn:
        snap = await index.study_snapshot(conn, STUDY)
        assert snap is not None
        assert snap.patient.patient_name == "Ivanova^Anna"
        assert (snap.revision, snap.instance_count) == (2, 1)  # a revision, not a new image
        history = await conn.fetch(
            """SELECT revision, file_id, header->'patient'->>'patient_name' AS name
                 FROM instance_revisions WHERE sop_instance_uid = $1 ORDER BY revision""",
            SOP,
        )
        assert [tuple(r) for r in history] == [(2, ids[1], "Ivanova^Anna")]
        outcome = await conn.fetchrow(
            "SELECT status, reason FROM ingest_files WHERE id = $1", ids[1]
        )
        assert tuple(outcome) == ("indexed", "revision")
    # The public history: one event per change, the correction with a higher revision.
    assert [(m.revision, m.patient.patient_name) for m in pipeline.announced] == [
        (1, "Ivanov^Ivan"),
        (2, "Ivanova^Anna"),
    ]
    # The original's bytes stay where they were; the correction is kept beside them.
    kept = sorted(p for p in (tmp_path / "storage").rglob("*.dcm"))
    assert sorted(p.read_bytes() for p in kept) == sorted(
        [original.read_bytes(), corrected.read_bytes()]
    )

    # Redelivered: the same revision again, nothing bumped twice.
    again = await pipeline.run(_extracted(corrected, ids[1]))
    assert isinstance(again, InstanceUnique) and again.disposition == "revision"
    # Another copy of the corrected file: a duplicate. The original header once more, after
    # the correction (A -> B -> A): a third revision, the header back to the original's.
    assert isinstance(await pipeline.run(_extracted(copy_of_corrected, ids[2])), InstanceDuplicated)
    back = await pipeline.run(_extracted(original, ids[3]))
    assert isinstance(back, InstanceUnique) and back.disposition == "revision"
    async with pool.acquire() as conn:
        snap = await index.study_snapshot(conn, STUDY)
        assert snap is not None and snap.revision == 3
        assert snap.patient.patient_name == "Ivanov^Ivan"
        assert await conn.fetchval("SELECT count(*) FROM instance_revisions") == 2
        counters = await tasks.task_counters(conn, task.id)
        assert (counters.new_instances, counters.header_revisions, counters.duplicates) == (
            3,
            2,
            1,
        )
        # The study's history as the API shows it (GET /v1/studies/{uid}: `corrections`).
        detail = await search.get_study(conn, STUDY)
        assert detail is not None
        assert [(c.sop_instance_uid, c.revision, c.patient_name) for c in detail.corrections] == [
            (SOP, 2, "Ivanova^Anna"),
            (SOP, 3, "Ivanov^Ivan"),
        ]


async def test_a_patient_merge_moves_the_study_to_the_corrected_patient(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    pipeline = Pipeline(pool, LocalStore((tmp_path / "storage").as_uri()))
    ids = await files(pool, 2)
    await pipeline.run(_extracted(_write(tmp_path / "a.dcm", "Doe^J", "TEMP-1"), ids[0]))
    merged = await pipeline.run(_extracted(_write(tmp_path / "b.dcm", "Doe^John", "P-77"), ids[1]))
    assert isinstance(merged, InstanceUnique) and merged.disposition == "revision"
    async with pool.acquire() as conn:
        snap = await index.study_snapshot(conn, STUDY)
        assert snap is not None
        assert (snap.patient.patient_id, snap.patient.patient_name) == ("P-77", "Doe^John")
        assert snap.revision == 2
