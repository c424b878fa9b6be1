"""Files the dcm4chee watcher cannot read are fetched by C-MOVE from DCMTK's dcmqrscp (the
archive's DICOM side) into our own receiver, and each copy's outcome lands on the ledger row
of the watcher's task, once: the task completes with exact counts. An instance dcmqrscp does
not have fails with the reason; while dcmqrscp is stopped the instances are waited for (not
failed, not counted), and fetched once it is back."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from libs.contracts.events import FileDiscovered
from libs.db import ledger
from libs.db.ledger import LedgerRow
from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from libs.dicom_net.client import DicomClient
from libs.dicom_net.models import Peer
from load_test.dcm4chee_archive import ArchiveDatabase, Instance
from load_test.dimse import QueryRetrieveSCP, storescu
from services.dcm4chee_watcher.archive import Archive
from services.dcm4chee_watcher.bootstrap import PgMoves, PgState
from services.dcm4chee_watcher.connections import connect_archive
from services.dcm4chee_watcher.moves import MovePolicy, Mover
from services.dcm4chee_watcher.rounds import full_round
from tests.integration.dcm4chee.test_dcm4chee_archives import T0, Recorder
from tests.integration.test_storage_commitment import Receiver, running_receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
SOURCE = "arch1"
ARCHIVE_AE = "ARCHIVE"


@pytest.fixture
async def receiver(pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[Receiver]:
    """Our receiver (the move destination, AE DICOMFLOW); its `pipeline` plays the stages
    after it (canonical copy, index rows, ledger outcome)."""
    async with running_receiver(pool, tmp_path, wait=5.0, peers=[]) as r:
        yield r


def uid(seed: str) -> str:
    return synthetic_uid(f"move-{seed}")


def archived(root: Path, study: str, series: str, n: int, *, on_disk: bool) -> Instance:
    """An archive instance; its file is written under `fs1` only when `on_disk`, and always
    into `root/qr` (what dcmqrscp is loaded with, unless the test removes it)."""
    inst = Instance(
        series_uid=uid(f"series-{study}-{series}"),
        sop_uid=uid(f"sop-{study}-{series}-{n}"),
        storage="fs1",
        path=f"{study}/{series}/{n}.dcm",
        size=0,
    )
    ds = make_dataset(
        patient_id=f"P-{study}",
        patient_name=f"{study.upper()}^MOVED",
        study_uid=uid(f"study-{study}"),
        series_uid=inst.series_uid,
        sop_uid=inst.sop_uid,
        rows=8,
        columns=8,
        instance_number=n + 1,
    )
    write_instance(root / "qr" / inst.path, ds)
    if on_disk:
        write_instance(root / "fs1" / inst.path, ds)
    return inst


@pytest.mark.parametrize("archive", ["arc5-postgresql", "dcm4chee2-mariadb"], indirect=True)
async def test_unreachable_files_are_fetched_by_cmove_and_counted_once(
    archive: ArchiveDatabase, pool: asyncpg.Pool, receiver: Receiver, tmp_path: Path
) -> None:
    # Study anna: series a (a0 readable here, a1 and a2 not: an IMAGE-level move of those
    # two only, though dcmqrscp has a0 too), series b (neither readable: SERIES level),
    # series c (c0 not readable and not on dcmqrscp either). Study bert: nothing readable
    # (STUDY level).
    files = {
        "a0": archived(tmp_path, "anna", "a", 0, on_disk=True),
        "a1": archived(tmp_path, "anna", "a", 1, on_disk=False),
        "a2": archived(tmp_path, "anna", "a", 2, on_disk=False),
        "b0": archived(tmp_path, "anna", "b", 0, on_disk=False),
        "b1": archived(tmp_path, "anna", "b", 1, on_disk=False),
        "c0": archived(tmp_path, "anna", "c", 0, on_disk=False),
        "t0": archived(tmp_path, "bert", "a", 0, on_disk=False),
        "t1": archived(tmp_path, "bert", "a", 1, on_disk=False),
    }
    (tmp_path / "qr" / files["c0"].path).unlink()  # the archive's DICOM side lacks it
    for study in ("anna", "bert"):
        pk = await archive.writer.add_study(
            patient_id=f"P-{study}",
            patient_name=f"{study.upper()}^MOVED",
            study_uid=uid(f"study-{study}"),
            description=f"study {study}",
            when=T0,
        )
        for inst in files.values():
            if inst.path.startswith(f"{study}/"):
                await archive.writer.add_instance(pk, inst, T0)

    qr = QueryRetrieveSCP(
        tmp_path / "dcmqrscp", {"DFWATCH": 0, "DICOMFLOW": receiver.port}, aet=ARCHIVE_AE
    )
    try:
        qr.start()
        loaded = storescu("127.0.0.1", qr.port, tmp_path / "qr", called=ARCHIVE_AE)
        assert loaded.returncode == 0, loaded.output
    finally:
        qr.stop()  # away when the watcher first asks

    # The watcher's round: one task, a0 emitted, the seven others waiting to be fetched.
    recorder = Recorder()
    conn = await connect_archive(archive.url, archive.dialect, size=1)
    try:
        report = await full_round(
            Archive(conn, archive.schema),
            PgState(pool, SOURCE),
            recorder.publish,
            roots={"fs1": tmp_path / "fs1"},
            settle_seconds=0,
            limit=10,
            source=SOURCE,
            retrieve=True,
        )
    finally:
        await conn.close()
    assert (report.studies, report.emitted, report.unreachable, report.to_fetch) == (2, 1, 0, 7)
    (event,) = [e for e in recorder.events if isinstance(e, FileDiscovered)]
    task_id = event.file.task_id
    assert task_id is not None
    async with pool.acquire() as c:  # the reconciler never re-emits what is being fetched
        stale = await ledger.stale_pending(c, older_than_seconds=0, limit=100)
    assert [r.id for r in stale] == [event.file.file_id]
    # a0 goes through the pipeline by its path (the test plays the stages).
    receiver.pipeline.recorded.append(
        LedgerRow(event.file.file_id, "dcm4chee", event.file.uri, "", 0, "c", task_id)
    )

    client = DicomClient(
        Peer(ae_title=ARCHIVE_AE, host="127.0.0.1", port=qr.port),
        calling_ae="DFWATCH",
        timeout=30,
        retries=0,
    )
    mover = Mover(
        PgMoves(pool, SOURCE),
        client,
        MovePolicy(archive_ae=ARCHIVE_AE, destination="DICOMFLOW", link_timeout=600),
    )

    # dcmqrscp stopped: waited for, nothing failed or counted.
    away = await mover.round()
    assert away.away and (away.moved, away.failed) == (0, 0)
    assert mover.after().seconds > MovePolicy.interval
    counts = await task_counts(pool, task_id)
    assert counts == {"pending": 8}
    attempts = await pool.fetch("SELECT attempts FROM dcm4chee_instances WHERE attempts > 0")
    assert attempts == []

    # Back: the instances are fetched; c0 fails with the reason.
    qr.start()
    try:
        moved = await mover.round()
    finally:
        qr.stop()
    assert (moved.studies, moved.moved, moved.failed, moved.away) == (2, 6, 1, None)
    received = receiver.pipeline.recorded[1:]
    assert len(received) == 6  # exactly the missing ones: a0 was not sent again
    assert all(r.task_id is None and r.source == "dicom:ARCHIVE" for r in received)
    assert await task_counts(pool, task_id) == {"pending": 7, "failed": 1}
    c0 = await pool.fetchrow(
        "SELECT stage, reason FROM ingest_files WHERE task_id = $1 AND status = 'failed'", task_id
    )
    assert c0["stage"] == "dcm4chee-watcher"
    assert "file not found" in c0["reason"] and "does not have it either" in c0["reason"]

    # The pipeline indexes the copies; the next round writes their outcomes on the task.
    await receiver.pipeline.index()
    linked = await mover.round()
    assert linked.linked == {"indexed": 6} and linked.studies == 0
    assert await task_counts(pool, task_id) == {"indexed": 7, "failed": 1}
    task = await pool.fetchrow("SELECT status FROM import_tasks WHERE id = $1", task_id)
    assert task["status"] == "completed"
    sops = await pool.fetch(
        "SELECT sop_instance_uid FROM ingest_files WHERE task_id = $1 AND status = 'indexed'",
        task_id,
    )
    assert sorted(r["sop_instance_uid"] for r in sops) == sorted(
        inst.sop_uid for key, inst in files.items() if key != "c0"
    )
    indexed = await pool.fetch("SELECT study_uid, instance_count FROM studies ORDER BY 1")
    assert {r["study_uid"]: r["instance_count"] for r in indexed} == {
        uid("study-anna"): 5,
        uid("study-bert"): 2,
    }
    states = await pool.fetch("SELECT status FROM dcm4chee_instances WHERE source = $1", SOURCE)
    assert Counter(r["status"] for r in states) == {"retrieved": 6, "emitted": 1, "unreachable": 1}

    # Exactly once: further rounds change nothing.
    again = await mover.round()
    assert (again.studies, sum(again.linked.values())) == (0, 0)
    assert await task_counts(pool, task_id) == {"indexed": 7, "failed": 1}


async def task_counts(pool: asyncpg.Pool, task_id: str) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT status, count(*) AS n FROM ingest_files WHERE task_id = $1 GROUP BY status",
        task_id,
    )
    return {r["status"]: r["n"] for r in rows}
