"""Sources honour pause and cancel (real PostgreSQL): an ISO disc being read and an on-demand
PACS retrieve stop before their next batch or study once their task is paused, emit the rest
exactly once when it is resumed, and nothing more once it is cancelled. The dcm4chee
watcher's C-MOVE rounds are covered over fakes (tests/unit/test_dcm4chee_moves_units.py);
here, the shared check they all use, and that it holds a pause back while a batch is
recorded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, Counter

from libs.contracts.events import Event, FileDiscovered
from libs.db import ledger, task_control, tasks
from libs.db import retrieves as retrieves_db
from libs.dicom_net.models import Level, Match, Query, RetrieveResult
from libs.dicom_net.requests import RetrieveRequest
from services.dcm4chee_watcher.bootstrap import PgMoves
from services.iso_watcher.bootstrap import PgDiscStore
from services.iso_watcher.dicomdir import Plan, survey
from services.iso_watcher.rounds import Settler, run_round
from services.pacs_watcher.config import Pacs, WatcherSettings
from services.pacs_watcher.poller import PacsWatch
from services.pacs_watcher.retrieves import OnDemand
from tests.polling import eventually
from tests.unit.test_iso_disc import instance, write_dicomdir

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def _status(pool: asyncpg.Pool, task_id: str) -> str:
    return str(await pool.fetchval("SELECT status FROM import_tasks WHERE id = $1", task_id))


async def _control(pool: asyncpg.Pool, action: str, task_id: str) -> None:
    async with pool.acquire() as conn:
        await getattr(task_control, action)(conn, task_id)


# -- the shared check --------------------------------------------------------------------


async def test_stopped_says_why_a_source_must_stop(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        ids = {}
        for name in ("pending", "running", "paused", "cancelled"):
            task = await tasks.create_task(conn, source_path=f"/{name}")
            ids[name] = task.id
        await conn.execute(
            "UPDATE import_tasks SET status = 'running', lease_owner = 'me' WHERE id = $1",
            ids["running"],
        )
        await task_control.pause(conn, ids["paused"])
        await task_control.cancel(conn, ids["cancelled"])
        gone = str(uuid.uuid4())
        why = await task_control.stopped(conn, [*ids.values(), gone])
        assert why == {ids["paused"]: "paused", ids["cancelled"]: "cancelled", gone: "gone"}
        owned = await task_control.stopped(conn, [ids["running"], ids["pending"]], owner="me")
        assert owned == {ids["pending"]: task_control.LEASE_LOST}
        with pytest.raises(task_control.Stopped, match="paused"):
            await task_control.go_on(conn, ids["paused"])
        await task_control.go_on(conn, ids["running"], owner="me")
    assert await PgMoves(pool, "arch").stopped_tasks(ids.values()) == {
        ids["paused"],
        ids["cancelled"],
    }


async def test_a_pause_waits_for_the_batch_being_recorded(pool: asyncpg.Pool) -> None:
    """`lock=True`: the batch recorded with the check commits before the pause, never after
    a pause it did not see."""
    async with pool.acquire() as conn:
        task_id = (await tasks.create_task(conn, source_path="/locked")).id
    async with pool.acquire() as conn, conn.transaction():
        await task_control.go_on(conn, task_id, lock=True)
        pausing = asyncio.create_task(_control(pool, "pause", task_id))

        async def pause_waits() -> bool:
            return bool(
                await pool.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database())"
                )
            )

        await eventually(pause_waits, timeout=10)
        assert not pausing.done() and await _status(pool, task_id) == "pending"
    await pausing
    assert await _status(pool, task_id) == "paused"


# -- ISO watcher -------------------------------------------------------------------------


class Pausing(list[Event]):
    """The producer: keeps what was published; after the first batch, `then` runs (a
    person pausing or cancelling the import while the disc is read)."""

    def __init__(self, then: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__()
        self.then = then

    async def __call__(self, events: Sequence[Event]) -> None:
        self.extend(events)
        if events and self.then is not None:
            then, self.then = self.then, None
            await then()

    def uris(self) -> list[str]:
        return [e.file.uri for e in self if isinstance(e, FileDiscovered)]


async def _direct(source_path: str) -> tuple[dict[str, int], Plan]:
    return survey(source_path)


def _disc(inbox: Path, n: int) -> Path:
    root = inbox / "CD1"
    for i in range(n):
        instance(root / "DICOM" / f"IM{i:06d}")
    write_dicomdir(root / "DICOMDIR", [["DICOM", f"IM{i:06d}"] for i in range(n)])
    return root


@pytest.mark.parametrize("how", ["pause", "cancel"])
async def test_a_disc_stops_at_its_next_batch_and_resumes_there(
    pool: asyncpg.Pool, tmp_path: Path, how: str
) -> None:
    inbox = tmp_path / "inbox"
    _disc(inbox, 5)
    store = PgDiscStore(pool)
    task: list[str] = []

    async def stop() -> None:
        [disc] = await store.open_discs()
        task.append(disc.task_id)
        await _control(pool, how, disc.task_id)

    published = Pausing(stop)

    async def round_() -> None:
        await run_round(
            inbox=inbox,
            settler=settler,
            store=store,
            publish=published,
            staging=tmp_path / "staging",
            processed=tmp_path / "processed",
            failed=tmp_path / "failed",
            batch_size=2,
            survey=_direct,
        )

    settler = Settler(0)
    for _ in range(3):  # first look, then read until the stop, then a round while stopped
        await round_()
    assert len(published.uris()) == 2  # the first batch only: nothing copied or recorded after
    assert len(list((tmp_path / "staging" / task[0]).iterdir())) == 2
    async with pool.acquire() as conn:
        assert (await tasks.task_counters(conn, task[0])).files_scanned == 2
    if how == "pause":
        await _control(pool, "resume", task[0])
        await round_()
        uris = published.uris()
        assert len(uris) == 5 and len(set(uris)) == 5  # the rest, each file once
        [disc] = await store.open_discs()
        assert disc.scan_completed and disc.task_status == "running"
        return
    # Cancelled: never read again; once its emitted files have their outcome, moved out.
    assert await _status(pool, task[0]) == "cancelling"
    async with pool.acquire() as conn:
        for row in await conn.fetch("SELECT id FROM ingest_files WHERE task_id = $1", task[0]):
            await ledger.mark_outcome(conn, row["id"], "cancelled", stage="extractor")
    assert await _status(pool, task[0]) == "cancelled"
    await round_()
    assert len(published.uris()) == 2
    assert (tmp_path / "failed" / "CD1").is_dir() and not (inbox / "CD1").exists()
    assert await store.open_discs() == []


# -- PACS watcher: on-demand retrieves ----------------------------------------------------


class FakePacs:
    """The PACS's DICOM side: C-FIND answers three studies; each C-MOVE is recorded, and
    after the first one `then` runs (a person pausing or cancelling the retrieve)."""

    def __init__(self, then: Callable[[], Awaitable[None]] | None) -> None:
        self.studies = [f"1.2.826.0.1.3680043.10.{n}" for n in range(3)]
        self.moved: list[str] = []
        self.then = then

    async def find(self, query: Query) -> list[Match]:
        return [Match(level=Level.STUDY, study_uid=s, number_of_instances=2) for s in self.studies]

    async def move(self, query: Query, destination: str, **_: Any) -> RetrieveResult:
        self.moved.append(query.study_uid)
        if self.then is not None:
            then, self.then = self.then, None
            await then()
        return RetrieveResult(status=0, completed=2)


@pytest.mark.parametrize("how", ["pause", "cancel"])
async def test_a_retrieve_stops_before_its_next_study_and_resumes_there(
    pool: asyncpg.Pool, tmp_path: Path, how: str
) -> None:
    async with pool.acquire() as conn:
        task = await retrieves_db.create(
            conn,
            RetrieveRequest.model_validate({"pacs": "PACS1", "query": {"patient_id": "P1"}}),
            created_by=None,
        )
    pacs = FakePacs(lambda: _control(pool, how, task.id))
    settings = WatcherSettings(staging_dir=tmp_path, retrieve_lease_seconds=30)
    metrics = {
        "instances": Counter("instances", "", ["pacs"], registry=CollectorRegistry()),
    }
    peer = Pacs(name="PACS1", ae_title="PACS1", host="127.0.0.1", port=104, max_concurrent=1)
    watch = PacsWatch(peer, settings, pool, producer=None, metrics=metrics)  # type: ignore[arg-type]
    watch.client = pacs  # type: ignore[assignment]
    worker = OnDemand(watch, pool, "watcher-1")

    await worker.lease_round()
    assert len(pacs.moved) == 1  # one slot: the next studies were asked after the stop
    assert await worker.lease_round() is None  # a paused or cancelled task is not leased
    async with pool.acquire() as conn:
        studies = await retrieves_db.studies(conn, task.id)
    assert sorted(s.status for s in studies) == ["done", "pending", "pending"]
    if how == "cancel":
        assert await _status(pool, task.id) == "cancelled"
        return
    assert await _status(pool, task.id) == "paused"
    await _control(pool, "resume", task.id)
    await worker.lease_round()
    assert sorted(pacs.moved) == pacs.studies  # the rest, each study once
    assert await _status(pool, task.id) == "completed"
