"""The dcm4chee watcher against real archive databases (arc-light 5.35 on PostgreSQL and
MariaDB, 2.x on MariaDB and PostgreSQL) and dicomflow's real PostgreSQL: every new or updated
study is taken exactly once across restarts, also when several share one timestamp; a study
deleted from the archive is marked in the index, never removed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry

from libs.contracts.events import Event, FileDiscovered, StudyMetadata
from libs.db.apikeys import create_key
from libs.db.dcm4chee import Watermark
from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from libs.runtime.probes import Readiness
from load_test.dcm4chee_archive import ArchiveDatabase, Instance
from services.api.app import create_app
from services.dcm4chee_watcher.archive import Archive
from services.dcm4chee_watcher.bootstrap import PgState
from services.dcm4chee_watcher.connections import connect_archive
from services.dcm4chee_watcher.rounds import (
    RoundReport,
    deletion_round,
    full_round,
    metadata_round,
)

T0 = datetime(2024, 3, 1, 8, 0, 0)
SOURCE = "pacs1"


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, events: Sequence[Event]) -> None:
        self.events.extend(events)


def uid(seed: str) -> str:
    return synthetic_uid(seed)


async def one_round(
    db: ArchiveDatabase,
    pool: asyncpg.Pool,
    recorder: Recorder,
    *,
    mode: str,
    limit: int,
    roots: dict[str, Path] | None = None,
) -> RoundReport:
    """A round as a freshly started watcher runs it: new connections, state from PostgreSQL."""
    conn = await connect_archive(db.url, db.dialect, size=1)
    try:
        archive, state = Archive(conn, db.schema), PgState(pool, SOURCE)
        if mode == "metadata":
            return await metadata_round(
                archive, state, recorder.publish, settle_seconds=0, limit=limit
            )
        return await full_round(
            archive,
            state,
            recorder.publish,
            roots=roots or {},
            settle_seconds=0,
            limit=limit,
            source=SOURCE,
        )
    finally:
        await conn.close()


async def drain(db: ArchiveDatabase, pool: asyncpg.Pool, recorder: Recorder, **kw: object) -> int:
    """Rounds (each one a restart) until the archive has nothing new; returns the studies read."""
    total = 0
    for _ in range(50):
        report = await one_round(db, pool, recorder, **kw)  # type: ignore[arg-type]
        if report.studies == 0:
            return total
        total += report.studies
    raise AssertionError("the watcher never caught up")


def per_study(events: list[Event]) -> Counter[str]:
    return Counter(e.study_uid for e in events if isinstance(e, StudyMetadata))


async def add_study(
    db: ArchiveDatabase, name: str, when: datetime, instances: int, storage: str = "fs1"
) -> int:
    pk = await db.writer.add_study(
        patient_id=f"P-{name}",
        patient_name=f"{name.upper()}^TEST",
        study_uid=uid(f"study-{name}"),
        description=f"study {name}",
        when=when,
    )
    for n in range(instances):
        await db.writer.add_instance(pk, instance(name, n, storage), when)
    return pk


def instance(name: str, n: int, storage: str = "fs1", path: str | None = None) -> Instance:
    sop = uid(f"sop-{name}-{n}")
    return Instance(
        series_uid=uid(f"series-{name}"),
        sop_uid=sop,
        storage=storage,
        path=path if path is not None else f"2024/03/01/{sop}.dcm",
        size=1000 + n,
    )


async def test_metadata_mode_takes_each_new_and_updated_study_once_across_restarts(
    archive: ArchiveDatabase, pool: asyncpg.Pool
) -> None:
    recorder = Recorder()
    a = await add_study(archive, "anna", T0, 2)
    await add_study(archive, "bert", T0, 1)  # same timestamp as anna: the key breaks the tie
    await add_study(archive, "carl", T0 + timedelta(seconds=1), 1)

    assert await drain(archive, pool, recorder, mode="metadata", limit=1) == 3
    assert per_study(recorder.events) == {uid(f"study-{n}"): 1 for n in ("anna", "bert", "carl")}
    assert await drain(archive, pool, recorder, mode="metadata", limit=1) == 0

    # Same time as the watermark's study, larger key: still new. And anna gets an instance.
    await add_study(archive, "dora", T0 + timedelta(seconds=1), 2)
    later = T0 + timedelta(seconds=2)
    await archive.writer.add_instance(a, instance("anna", 2), later)
    await archive.writer.touch_study(a, later, "study anna, amended")
    assert await drain(archive, pool, recorder, mode="metadata", limit=2) == 2
    assert per_study(recorder.events) == {
        uid("study-anna"): 2,
        uid("study-bert"): 1,
        uid("study-carl"): 1,
        uid("study-dora"): 1,
    }
    anna = [e for e in recorder.events if isinstance(e, StudyMetadata)][-1]
    assert anna.study_uid == uid("study-anna")
    assert (anna.instance_count, anna.series_count, anna.modalities) == (3, 1, ["CT"])
    assert anna.study_description == "study anna, amended"
    assert anna.patient.patient_id == "P-anna" and anna.patient.patient_name == "ANNA^TEST"
    assert anna.size_bytes == 1000 + 1001 + 1002 and anna.source == "dcm4chee"
    assert anna.revision == 2 and not anna.stable

    # The index behind the search API has the studies.
    async with pool.acquire() as conn:
        _, key = await create_key(conn, "clinician", "test")
    app = create_app(pool, recorder_publish_none, CollectorRegistry(), Readiness())
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        headers = {"Authorization": f"Bearer {key}"}
        found = (await client.get("/v1/studies?patient_name=anna", headers=headers)).json()
        assert found["total"] == 1
        assert found["items"][0]["study_uid"] == uid("study-anna")
        detail = await client.get(f"/v1/studies/{uid('study-dora')}", headers=headers)
        assert detail.status_code == 200, detail.text
        assert detail.json()["instance_count"] == 2


async def recorder_publish_none(event: object) -> None:
    raise AssertionError("the search API publishes nothing")


async def test_full_mode_feeds_each_reachable_file_once_and_records_the_rest(
    archive: ArchiveDatabase, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    root = tmp_path / "fs1"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.dcm").write_bytes(b"not yours")
    study_uid = uid("study-emil")

    def write(name: str, n: int) -> Instance:
        inst = instance(name, n)
        ds = make_dataset(
            patient_id="P-emil",
            patient_name="EMIL^TEST",
            study_uid=study_uid,
            series_uid=inst.series_uid,
            sop_uid=inst.sop_uid,
            instance_number=n + 1,
        )
        write_instance(root / inst.path, ds)
        return inst

    pk = await archive.writer.add_study(
        patient_id="P-emil",
        patient_name="EMIL^TEST",
        study_uid=study_uid,
        description="study emil",
        when=T0,
    )
    for n in range(2):
        await archive.writer.add_instance(pk, write("emil", n), T0)
    unreachable = {
        uid("sop-emil-2"): "file not found",
        uid("sop-emil-3"): "leads outside storage",
        uid("sop-emil-4"): "is not in DCM4CHEE_STORAGE_ROOTS",
    }
    await archive.writer.add_instance(pk, instance("emil", 2), T0)  # no file on disk
    await archive.writer.add_instance(pk, instance("emil", 3, path="../outside/secret.dcm"), T0)
    await archive.writer.add_instance(pk, instance("emil", 4, storage="nearline"), T0)

    recorder = Recorder()
    roots = {"fs1": root}
    report = await one_round(archive, pool, recorder, mode="full", limit=10, roots=roots)
    assert (report.studies, report.emitted, report.unreachable) == (1, 2, 3)
    discovered = [e for e in recorder.events if isinstance(e, FileDiscovered)]
    assert sorted(e.file.uri for e in discovered) == sorted(
        (root / instance("emil", n).path).resolve().as_uri() for n in range(2)
    )
    task_id = discovered[0].file.task_id
    assert task_id and all(e.file.task_id == task_id for e in discovered)
    rows = await pool.fetch(
        "SELECT uri, status, stage, reason FROM ingest_files WHERE task_id = $1", task_id
    )
    assert Counter(r["status"] for r in rows) == {"pending": 2, "failed": 3}
    for sop, why in unreachable.items():
        (row,) = [r for r in rows if r["uri"].endswith(sop)]
        assert row["stage"] == "dcm4chee-watcher" and why in row["reason"], row
    task = await pool.fetchrow("SELECT kind, status, scan_completed FROM import_tasks")
    assert dict(task) == {"kind": "dcm4chee", "status": "running", "scan_completed": True}

    # A restart changes nothing; a new instance of the study goes out alone.
    assert await one_round(archive, pool, recorder, mode="full", limit=10, roots=roots) == (
        RoundReport()
    )
    later = T0 + timedelta(minutes=5)
    await archive.writer.add_instance(pk, write("emil", 5), later)
    await archive.writer.touch_study(pk, later, "study emil")
    report = await one_round(archive, pool, recorder, mode="full", limit=10, roots=roots)
    assert (report.studies, report.emitted, report.unreachable) == (1, 1, 3)  # retried
    uris = [e.file.uri for e in recorder.events if isinstance(e, FileDiscovered)]
    assert len(uris) == len(set(uris)) == 3
    assert uris[-1].endswith(f"{uid('sop-emil-5')}.dcm")

    # A round whose every file is unreachable: its task is complete at once, all failed.
    await add_study(archive, "gina", later + timedelta(minutes=1), 1, storage="nearline")
    report = await one_round(archive, pool, recorder, mode="full", limit=10, roots=roots)
    assert (report.studies, report.emitted, report.unreachable) == (1, 0, 1)
    gina = await pool.fetchrow(
        """SELECT t.status AS task, f.status AS file FROM import_tasks t
             JOIN ingest_files f ON f.task_id = t.id WHERE f.uri LIKE $1""",
        f"%{uid('sop-gina-0')}",
    )
    assert dict(gina) == {"task": "completed", "file": "failed"}


async def test_studies_still_changing_wait_until_settled(
    archive: ArchiveDatabase, pool: asyncpg.Pool
) -> None:
    conn = await connect_archive(archive.url, archive.dialect, size=1)
    try:
        now = await conn.now()
        await add_study(archive, "fred", now, 1)
        reader = Archive(conn, archive.schema)
        start = Watermark(datetime(1970, 1, 1), 0)
        assert await reader.changed_studies(start, settle_seconds=3600, limit=10) == []
        (study,) = await reader.changed_studies(start, settle_seconds=0, limit=10)
        assert study.study.study_uid == uid("study-fred")
    finally:
        await conn.close()


async def test_the_watchers_connections_cannot_write_to_the_archive(
    archive: ArchiveDatabase,
) -> None:
    conn = await connect_archive(archive.url, archive.dialect, size=1)
    try:
        with pytest.raises(Exception, match=r"(?i)read.only"):
            await conn.fetch("UPDATE study SET study_desc = $1", "changed by the watcher")
    finally:
        await conn.close()


async def test_a_study_deleted_from_the_archive_is_marked_in_the_index_and_kept(
    archive: ArchiveDatabase, pool: asyncpg.Pool
) -> None:
    recorder = Recorder()
    await add_study(archive, "anna", T0, 1)
    bert = await add_study(archive, "bert", T0, 2)
    assert await drain(archive, pool, recorder, mode="metadata", limit=10) == 2

    async def check(limit: int = 10) -> list[str]:
        conn = await connect_archive(archive.url, archive.dialect, size=1)
        try:
            return await deletion_round(
                Archive(conn, archive.schema), PgState(pool, SOURCE), limit=limit
            )
        finally:
            await conn.close()

    async def marks() -> dict[str, tuple[object, object, int]]:
        rows = await pool.fetch(
            "SELECT study_uid, source_deleted_at, source_deleted_from, instance_count FROM studies"
        )
        return {
            r["study_uid"]: (
                r["source_deleted_at"] is not None,
                r["source_deleted_from"],
                r["instance_count"],
            )
            for r in rows
        }

    assert await check() == []
    await archive.writer.delete_study(bert)
    assert await check(limit=1) in ([], [uid("study-bert")])  # a batch of one: either study
    assert await check() in ([], [uid("study-bert")])
    assert await marks() == {
        uid("study-anna"): (False, None, 1),
        uid("study-bert"): (True, SOURCE, 2),  # marked, and still all there
    }
    assert await check() == []  # marked once
    async with pool.acquire() as conn:  # and said by the API
        _, key = await create_key(conn, "clinician", "deleted")
    app = create_app(pool, recorder_publish_none, CollectorRegistry(), Readiness())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://api.test"
    ) as client:
        detail = await client.get(
            f"/v1/studies/{uid('study-bert')}", headers={"Authorization": f"Bearer {key}"}
        )
        body = detail.json()
        assert body["source_deleted_at"] is not None and body["source_deleted_from"] == SOURCE
        assert body["instance_count"] == 2

    # The archive gets the study again (sent anew): the mark goes.
    later = T0 + timedelta(minutes=5)
    again = await archive.writer.add_study(
        patient_id="P-bert-again",  # (the archive kept the patient)
        patient_name="BERT^TEST",
        study_uid=uid("study-bert"),
        description="study bert",
        when=later,
    )
    await archive.writer.add_instance(again, instance("bert", 0), later)
    assert await drain(archive, pool, recorder, mode="metadata", limit=10) == 1
    assert (await marks())[uid("study-bert")][:2] == (False, None)
    assert await check() == []
