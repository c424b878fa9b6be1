"""The router's per-destination sender against real peers (DCMTK storescp, Orthanc) and its
queue in PostgreSQL: sends, outages, refusals, and the instances a crash left in doubt."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pydicom
import pytest
from prometheus_client import CollectorRegistry

from libs.db import routing
from libs.db.routing import Routed
from libs.dicom.extract import extract_file
from libs.dicom.synthetic import generate_corpus
from libs.storage import instance_key
from libs.storage.local import LocalStore
from load_test.dimse import StoreSCP
from load_test.peers import Orthanc
from services.router.bootstrap import PgRoutes, StoredFiles, client_for
from services.router.config import RouterSettings
from services.router.metrics import RouterMetrics
from services.router.rules import Destination
from services.router.sender import Sender

pytestmark = pytest.mark.integration


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    # A destination verified by C-FIND must answer ours (Orthanc: a known modality, or this).
    peer = Orthanc(root=tmp_path / "orthanc", extra={"DicomAlwaysAllowFind": True})
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[StoreSCP]:
    peer = StoreSCP(tmp_path / "scp", unique_names=True)
    peer.start()
    yield peer
    peer.stop()


class Corpus:
    """Synthetic instances in local storage, as the storage writer leaves them."""

    def __init__(self, root: Path, count: int) -> None:
        self.store = LocalStore((root / "storage").as_uri())
        source = root / "source"
        generate_corpus(source, count, rows=16, columns=16)
        self.rows: list[Routed] = []
        for path in sorted(source.rglob("*.dcm")):
            h, _ = extract_file(str(path))
            key = instance_key(h.study.study_uid, h.series.series_uid, h.instance.sop_instance_uid)
            target = self.store.path_for(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            self.rows.append(
                Routed(
                    destination="",
                    sop_instance_uid=h.instance.sop_instance_uid,
                    study_uid=h.study.study_uid,
                    series_uid=h.series.series_uid,
                    sop_class_uid=h.instance.sop_class_uid,
                    transfer_syntax_uid=h.instance.transfer_syntax_uid,
                    storage_url=self.store.url_for(key),
                    rule="all",
                    correlation_id=f"corr-{h.instance.sop_instance_uid[-6:]}",
                )
            )

    def for_(self, destination: str, rows: list[Routed] | None = None) -> list[Routed]:
        return [Routed(**{**vars(r), "destination": destination}) for r in (rows or self.rows)]


@pytest.fixture
async def corpus(tmp_path: Path) -> Corpus:
    return await asyncio.to_thread(Corpus, tmp_path, 8)


def sender(
    pool: asyncpg.Pool, corpus: Corpus, destination: Destination, **options: float
) -> tuple[Sender, RouterMetrics]:
    settings = RouterSettings(
        timeout_seconds=10, connect_timeout_seconds=2, storage_url=corpus.store.url
    )  # type: ignore[call-arg]
    metrics = RouterMetrics.create("router", CollectorRegistry())
    files = StoredFiles(corpus.store)
    s = Sender(
        destination,
        routes=PgRoutes(pool),
        client=client_for(settings, destination),
        files=files.local,
        metrics=metrics,
        stopping=asyncio.Event(),
        batch=int(options.get("batch", 100)),
        max_attempts=int(options.get("max_attempts", 3)),
        backoff_seconds=options.get("backoff", 0.01),
        max_backoff_seconds=0.05,
        poll_seconds=0.05,
    )
    return s, metrics


async def states(pool: asyncpg.Pool, destination: str) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT state, count(*) AS n FROM route_queue WHERE destination = $1 GROUP BY state",
        destination,
    )
    return {r["state"]: r["n"] for r in rows}


async def drain(s: Sender, pool: asyncpg.Pool, rounds: int = 20) -> None:
    """Rounds until nothing is queued or sending (each round's own backoff is skipped)."""
    for _ in range(rounds):
        s._down_until = 0.0
        await s.round()
        left = await states(pool, s.name)
        if not left.get("queued") and not left.get("sending"):
            return
        await asyncio.sleep(0.06)
    raise AssertionError(f"still queued after {rounds} rounds: {left}")


def received_uids(folder: Path) -> list[str]:
    return sorted(
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in folder.iterdir()
        if p.is_file()
    )


def orthanc_count(orthanc: Orthanc) -> int:
    r = httpx.get(f"{orthanc.url}/statistics", auth=orthanc.auth, timeout=10)
    return int(r.json()["CountInstances"])


async def enqueue(pool: asyncpg.Pool, rows: list[Routed]) -> int:
    async with pool.acquire() as conn:
        return await routing.enqueue(conn, rows)


async def test_storescp_gets_each_instance_once_as_stored_and_waits_out_an_outage(
    pool: asyncpg.Pool, corpus: Corpus, scp: StoreSCP
) -> None:
    dest = Destination(name="scp", ae_title=scp.aet, host="127.0.0.1", port=scp.port)
    s, metrics = sender(pool, corpus, dest)
    first, later = corpus.rows[:5], corpus.rows[5:]
    assert await enqueue(pool, corpus.for_("scp", first)) == 5
    assert await enqueue(pool, corpus.for_("scp", first)) == 0  # queued once
    await drain(s, pool)
    assert received_uids(scp.folder) == sorted(r.sop_instance_uid for r in first)
    # As stored: storescp (bit-preserving) holds the data set bytes we hold.
    one = first[0]
    ours = pydicom.dcmread(
        corpus.store.path_for(instance_key(one.study_uid, one.series_uid, one.sop_instance_uid))
    )
    theirs = next(
        pydicom.dcmread(p)
        for p in scp.folder.iterdir()
        if one.sop_instance_uid in str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
    )
    assert theirs.PixelData == ours.PixelData

    # The destination goes away: its instances wait, nothing counts against them.
    scp.stop()
    await enqueue(pool, corpus.for_("scp", later))
    wait = await s.round()
    assert wait is not None and wait.seconds > 0
    assert metrics.destination_up.labels("scp")._value.get() == 0
    rows = await pool.fetch("SELECT state, attempts FROM route_queue WHERE state <> 'sent'")
    assert [(r["state"], r["attempts"]) for r in rows] == [("queued", 0)] * len(later)

    scp.start()  # same port, same folder
    await drain(s, pool)
    assert received_uids(scp.folder) == sorted(r.sop_instance_uid for r in corpus.rows)
    assert metrics.destination_up.labels("scp")._value.get() == 1
    assert metrics.sent.labels("scp")._value.get() == len(corpus.rows)
    assert await states(pool, "scp") == {"sent": len(corpus.rows)}


async def test_in_doubt_instances_are_found_by_c_find_or_sent_again(
    pool: asyncpg.Pool, corpus: Corpus, orthanc: Orthanc, scp: StoreSCP
) -> None:
    pacs = Destination(
        name="pacs",
        ae_title=orthanc.aet,
        host="127.0.0.1",
        port=orthanc.dicom_port,
        verify="c-find",
    )
    plain = Destination(name="scp", ae_title=scp.aet, host="127.0.0.1", port=scp.port)
    to_pacs, pacs_metrics = sender(pool, corpus, pacs)
    to_scp, scp_metrics = sender(pool, corpus, plain)
    sent_before, never_sent = corpus.rows[:6], corpus.rows[6:]
    await enqueue(pool, corpus.for_("pacs", sent_before) + corpus.for_("scp", sent_before))
    await drain(to_pacs, pool)
    await drain(to_scp, pool)
    assert orthanc_count(orthanc) == 6 and len(received_uids(scp.folder)) == 6

    # A crash between C-STORE and record: the first two were accepted, the rows say
    # `sending`; the other two were recorded `sending` and never reached the destination.
    await enqueue(pool, corpus.for_("pacs", never_sent) + corpus.for_("scp", never_sent))
    doubt = [r.sop_instance_uid for r in sent_before[:2] + never_sent]
    await pool.execute(
        "UPDATE route_queue SET state = 'sending' WHERE sop_instance_uid = ANY($1)", doubt
    )
    await drain(to_pacs, pool)
    await drain(to_scp, pool)

    # Orthanc answered C-FIND: the two it had are not sent again, the two it lacked are.
    found = pacs_metrics.in_doubt.labels("pacs", "found")._value.get()
    resent = pacs_metrics.in_doubt.labels("pacs", "resent")._value.get()
    assert (found, resent) == (2, 2)
    assert pacs_metrics.sent.labels("pacs")._value.get() == 6 + 2  # only those two now
    assert orthanc_count(orthanc) == 8
    # storescp has no Q/R: all four in doubt are sent again, two of them a second time
    # (the at-least-once window the ADR describes; storescp keeps both copies, +uf).
    assert scp_metrics.in_doubt.labels("scp", "resent")._value.get() == 4
    uids = received_uids(scp.folder)
    assert len(uids) == 10 and len(set(uids)) == 8
    assert await states(pool, "pacs") == {"sent": 8}
    assert await states(pool, "scp") == {"sent": 8}


async def test_a_refused_instance_fails_alone_with_its_reason(
    pool: asyncpg.Pool, corpus: Corpus, scp: StoreSCP
) -> None:
    dest = Destination(name="scp", ae_title=scp.aet, host="127.0.0.1", port=scp.port)
    s, metrics = sender(pool, corpus, dest)
    rows = corpus.for_("scp", corpus.rows[:3])
    odd = Routed(**{**vars(rows[1]), "sop_class_uid": "1.2.826.0.1.3680043.9.9999.1"})
    await enqueue(pool, [rows[0], odd, rows[2]])
    await drain(s, pool)
    assert await states(pool, "scp") == {"sent": 2, "failed": 1}
    error = await pool.fetchval("SELECT last_error FROM route_queue WHERE state = 'failed'")
    assert "does not accept 1.2.826.0.1.3680043.9.9999.1" in error
    assert metrics.failed.labels("scp", "not_accepted")._value.get() == 1
    assert len(received_uids(scp.folder)) == 2
