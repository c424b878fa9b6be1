"""At-least-once delivery after a kill: events of files whose outcome is recorded and whose
staged copy is gone are skipped, not dead-lettered (real PostgreSQL, real local storage)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import asyncpg
from instances import unique_events
from prometheus_client import CollectorRegistry

from libs.contracts.errors import PermanentError, SourceGone
from libs.contracts.events import FileDiscovered, FileRef
from libs.db import ledger
from libs.db.ledger import NewFile, settled_files
from libs.dicom.extract import extract_many
from libs.kafka.redelivered import skip_settled
from libs.runtime.metrics import redelivered_counter
from libs.storage.local import LocalStore
from services.extractor.handlers import handle_discovered_batch
from services.storage_writer.handlers import handle_unique_batch


async def ledger_rows(pool: asyncpg.Pool, n: int) -> list[int]:
    async with pool.acquire() as conn:
        rows = await ledger.record_discovered(
            conn,
            [NewFile("dicom-receiver", f"file:///s/{i}", "", 1, f"c{i}", None) for i in range(n)],
        )
    return [r.id for r in rows]


async def test_the_storage_writer_skips_a_redelivered_event_whose_file_is_done(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    staged = tmp_path / "staging"
    staged.mkdir()
    done, pending, present = await ledger_rows(pool, 3)
    events = [
        e.model_copy(update={"file": e.file.model_copy(update={"file_id": file_id})})
        for e, file_id in zip(
            unique_events(staged, 3, "redeliver", 16), (done, pending, present), strict=True
        )
    ]
    async with pool.acquire() as conn:
        await ledger.mark_outcome(conn, done, "indexed", stage="indexer")
    (staged / "0.dcm").unlink()  # cleaned up once its outcome was recorded
    (staged / "1.dcm").unlink()  # gone before any outcome: a real problem
    counter = redelivered_counter("storage-writer", registry := CollectorRegistry())
    store = LocalStore((tmp_path / "storage").as_uri())
    handle = skip_settled(
        partial(handle_unique_batch, storage=store), partial(settled_files, pool), counter
    )

    outcomes = await handle(events)

    assert outcomes[0] == []
    assert isinstance(outcomes[1], SourceGone)
    assert not isinstance(outcomes[2], Exception) and outcomes[2][0].TOPIC == "dicom.stored.v1"
    skipped = registry.get_sample_value("dicomflow_storage_writer_redelivered_skipped_total")
    assert skipped == 1


async def test_the_extractor_skips_only_settled_files(pool: asyncpg.Pool, tmp_path: Path) -> None:
    done, failed, pending = await ledger_rows(pool, 3)
    async with pool.acquire() as conn:
        await ledger.mark_outcome(conn, done, "duplicate", stage="dedup")
        await ledger.mark_outcome(conn, failed, "failed", stage="extractor", reason="x")
    events = [
        FileDiscovered(
            correlation_id=f"c{file_id}",
            source="dicom-receiver",
            origin="MODALITY",
            file=FileRef(file_id=file_id, uri=(tmp_path / f"{file_id}.dcm").as_uri(), size=1),
        )
        for file_id in (done, failed, pending)
    ]

    parsed: list[str] = []

    async def parse_many(paths: list[str]) -> list[object]:
        parsed.extend(paths)  # a missing file is judged where it is opened
        return list(extract_many(paths, False, None))

    counter = redelivered_counter("extractor", CollectorRegistry())
    handle = skip_settled(
        partial(handle_discovered_batch, parse_many=parse_many),  # type: ignore[arg-type]
        partial(settled_files, pool),
        counter,
    )
    outcomes = await handle(events)

    assert outcomes[:2] == [[], []]
    assert len(parsed) == 3  # all gone: the parser says so (the ledger is asked only then)
    assert isinstance(outcomes[2], SourceGone) and isinstance(outcomes[2], PermanentError)
