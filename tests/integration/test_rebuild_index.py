"""`dicomflow rebuild-index`: a demo set imported through the pipeline's own handlers (real
parser pool, dedup claims, storage writer, indexer, PostgreSQL), the database dropped, the
index rebuilt by the real `dicomflow` entry point from `file://` storage, and every search
and study detail of the API compared before and after; then a run killed mid-way and
resumed."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pydicom
import pytest
from prometheus_client import CollectorRegistry, Histogram

from libs.contracts.events import InstanceDuplicated, InstanceExtracted, discovered_event, new_id
from libs.db import dedup, ledger
from libs.db.apikeys import create_key
from libs.db.index import mark_stable
from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.dicom.extract import extract_many
from libs.dicom.synthetic import generate_demo_set, write_instance
from libs.imaging.keys import preview_key
from libs.runtime.probes import Readiness
from libs.runtime.sandbox import IsolatedExecutor
from libs.storage import ObjectStore, open_store
from libs.storage.local import LocalStore, file_url
from load_test.gcs import GcsEmulator
from services.api.app import create_app
from services.dedup.handlers import handle_extracted
from services.extractor.handlers import Parsed, handle_discovered_batch
from services.indexer.bootstrap import PgIndex
from services.indexer.handlers import handle_duplicate_batch, handle_stored_batch
from services.storage_writer.handlers import handle_unique
from tests.polling import eventually

PG_SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
DICOMFLOW = str(Path(sys.executable).parent / "dicomflow")


async def _drop(database_url: str) -> None:
    name = database_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _import_through_pipeline(pool: asyncpg.Pool, nas: Path, store: ObjectStore) -> int:
    """Every file under `nas` through extractor, dedup, storage-writer and indexer handlers,
    as the services run them (the bus left out). Returns the number of files."""
    executor = IsolatedExecutor(2, 1024, 60.0, preload=(extract_many.__module__,))
    index = PgIndex(pool, Histogram("e2e", "e2e", ["outcome"], registry=CollectorRegistry()))

    async def parse_many(paths: list[str]) -> list[Parsed]:
        return list(await executor.run(extract_many, paths, False))

    async def claim(ev: InstanceExtracted) -> dedup.Claim:
        async with pool.acquire() as conn:
            return await dedup.claim(
                conn,
                sop_instance_uid=ev.header.instance.sop_instance_uid,
                content_sha256=ev.hashes.content_sha256,
                file_id=ev.file.file_id,
            )

    files = sorted(p for p in nas.rglob("*.dcm"))
    try:
        for path in files:
            async with pool.acquire() as conn:
                (row,) = await ledger.record_discovered(
                    conn,
                    [
                        ledger.NewFile(
                            "nas", file_url(path), str(path), path.stat().st_size, new_id()
                        )
                    ],
                )
            (outcome,) = await handle_discovered_batch(
                [discovered_event(row)], parse_many=parse_many
            )
            assert not isinstance(outcome, Exception), outcome
            (extracted,) = outcome
            assert isinstance(extracted, InstanceExtracted)
            (decided,) = await handle_extracted(extracted, claim=claim)
            if isinstance(decided, InstanceDuplicated):
                await handle_duplicate_batch([decided], index=index)
                continue
            (stored,) = await handle_unique(decided, storage=store)  # type: ignore[arg-type]  # an InstanceUnique here
            await handle_stored_batch([stored], index=index)  # type: ignore[list-item]
    finally:
        executor.close()
    return len(files)


def _demo(tmp: Path) -> tuple[Path, int]:
    """The demo set, plus a second copy of one file (a duplicate) and an instance whose UID
    is taken with other pixels (a conflict, kept under conflicts/)."""
    nas = tmp / "nas"
    count = generate_demo_set(nas)
    first = sorted(nas.rglob("*.dcm"))[0]
    shutil.copy(first, nas / "zz_copy_of_first.dcm")
    ds = pydicom.dcmread(first)
    ds.PixelData = bytes(255 - b for b in ds.PixelData)  # same UIDs, other pixels
    write_instance(nas / "zz_conflict.dcm", ds)
    return nas, count


@pytest.fixture
async def client_factory() -> AsyncIterator[Any]:
    pools: list[asyncpg.Pool] = []

    async def make(database_url: str) -> tuple[httpx.AsyncClient, dict[str, str]]:
        pool = await create_pool(database_url, size=2)
        pools.append(pool)
        async with pool.acquire() as conn, conn.transaction():
            _, key = await create_key(conn, "clinician", "rebuild test")
            # What the indexer's announcer does once studies are quiet (before the drop, and
            # after the rebuild): stable, with one more revision. Compared like the rest.
            await mark_stable(conn, quiet_seconds=0, limit=1000)

        async def publish(_: Any) -> None:
            return None

        app = create_app(pool, publish, CollectorRegistry(), Readiness())
        transport = httpx.ASGITransport(app, client=("10.1.2.3", 4567))
        client = httpx.AsyncClient(transport=transport, base_url="http://api.test")
        return client, {"Authorization": f"Bearer {key}"}

    yield make
    for p in pools:
        await p.close()


async def _api_state(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    """Every search (no filter, each filter with every value the studies have, paging) and
    every study's detail, as the API returns them."""
    everything = (await client.get("/v1/studies", params={"limit": 500}, headers=headers)).json()
    queries: list[dict[str, Any]] = [{}, {"limit": 3, "offset": 2}]
    for hit in everything["items"]:
        p = hit["patient"]
        words = p["patient_name"].replace("^", " ").replace("=", " ").split()
        queries += [{"patient_name": w} for w in words[:2]]
        queries += [{"patient_id": p["patient_id"]}, {"sex": p["sex"]} if p["sex"] else {}]
        if p["birth_date"]:
            queries.append({"birth_date": p["birth_date"]})
        if hit["study_date"]:
            d = hit["study_date"]
            queries += [
                {"year": int(d[:4])},
                {"study_date_from": d},
                {"study_date_to": d},
                {"study_date_from": d, "study_date_to": d},
            ]
        if hit["accession_number"]:
            queries.append({"accession_number": hit["accession_number"]})
        queries += [{"modality": m} for m in hit["modalities"]]
    state: dict[str, Any] = {}
    for q in queries:
        r = await client.get("/v1/studies", params=q, headers=headers)
        assert r.status_code == 200, (q, r.text)
        assert r.json()["items"], q  # every value comes from a study: never an empty page
        state[repr(sorted(q.items()))] = r.json()
    for hit in everything["items"]:
        r = await client.get(f"/v1/studies/{hit['study_uid']}", headers=headers)
        assert r.status_code == 200, r.text
        state[hit["study_uid"]] = r.json()
    return state


INSTANCE_COLUMNS = """sop_instance_uid, series_uid, study_uid, sop_class_uid, instance_number,
    transfer_syntax_uid, specific_character_set, rows, columns, number_of_frames, size_bytes,
    file_sha256, content_sha256, storage_url, same_content_as, dicom_json, modifications"""


async def _rows(database_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        instances = await conn.fetch(
            f"SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY sop_instance_uid"
        )
        conflicts = await conn.fetch(
            "SELECT sop_instance_uid, content_sha256, study_uid, storage_url FROM conflicts"
            " ORDER BY 1, 2"
        )
        claims = await conn.fetch(
            "SELECT sop_instance_uid, content_sha256 FROM dedup_claims ORDER BY 1"
        )
    finally:
        await conn.close()
    return {
        "instances": [dict(r) for r in instances],
        "conflicts": [dict(r) for r in conflicts],
        "claims": [dict(r) for r in claims],
    }


def _cli(database_url: str, storage: Path, *extra: str) -> subprocess.Popen[str]:
    return _cli_url(database_url, file_url(storage), *extra)


def _cli_url(database_url: str, url: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen(
        [DICOMFLOW, "rebuild-index", "--storage-url", url, "--workers", "2", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


async def _finish(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    out, err = await asyncio.to_thread(proc.communicate, timeout=timeout)
    return proc.returncode, out, err


async def _prepare(tmp_path: Path, database_url: str) -> tuple[Path, int, int]:
    nas, demo_count = _demo(tmp_path)
    storage = tmp_path / "storage"
    store = LocalStore(file_url(storage))
    pool = await create_pool(database_url, size=4)
    try:
        await migrate(pool)
        files = await _import_through_pipeline(pool, nas, store)
    finally:
        await pool.close()
    return storage, demo_count, files


async def test_rebuild_after_dropping_the_database_gives_the_same_searches_and_studies(
    tmp_path: Path, database_url: str, client_factory: Any
) -> None:
    storage, demo_count, files = await _prepare(tmp_path, database_url)
    assert files == demo_count + 2
    client, headers = await client_factory(database_url)
    before = await _api_state(client, headers)
    rows_before = await _rows(database_url)
    assert len(rows_before["instances"]) == demo_count and len(rows_before["conflicts"]) == 1
    studies = {r["study_uid"] for r in rows_before["instances"]}
    assert studies <= before.keys() and len(before) > 4 * len(studies)
    assert all(before[uid]["stable"] and before[uid]["series"] for uid in studies)
    await client.aclose()

    # What else lives in storage: previews of every instance, a stray file, a temporary
    # file left by a crash, a hostile object and a misplaced instance at instance keys.
    previews = 0
    for row in rows_before["instances"]:
        uids = (row["study_uid"], row["series_uid"], row["sop_instance_uid"])
        for kind in ("preview", "thumbnail"):
            (storage / preview_key(*uids, kind)).write_bytes(b"\xff\xd8\xff\xe0 not a real jpeg")
            previews += 1
    (storage / "README.txt").write_text("not DICOM")
    some = rows_before["instances"][0]
    folder = storage / "studies" / some["study_uid"] / some["series_uid"]
    (folder / f".{some['sop_instance_uid']}.dcm.0123.tmp").write_bytes(b"partial")
    (folder / "1.2.3.4.5.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 300)
    neighbour = next(
        r
        for r in rows_before["instances"][1:]
        if r["series_uid"] == some["series_uid"]  # same folder: only the SOP UID differs
    )
    misplaced = Path(neighbour["storage_url"].removeprefix("file://"))
    shutil.copy(misplaced, folder / "1.2.3.4.6.dcm")

    await _drop(database_url)
    code, out, err = await _finish(_cli(database_url, storage))
    assert code == 1, (out, err)  # two objects failed
    assert f"indexed            {demo_count} instances" in out, out
    assert "conflicting copies 1" in out, out
    assert f"preview: {previews}" in out and "temporary file: 1" in out, out
    assert "not a DICOM object: 1" in out, out
    assert "failed             2" in out, out
    assert "1.2.3.4.5.dcm" in out and "stored under 1.2.3.4.6" in out, out
    assert "rebuild-index " in err and "ETA" in err, err  # the progress line

    client, headers = await client_factory(database_url)
    after = await _api_state(client, headers)
    await client.aclose()
    assert after.keys() == before.keys()
    for query, page in before.items():
        assert after[query] == page, query
    assert await _rows(database_url) == rows_before


async def test_an_interrupted_rebuild_resumes_where_it_stopped(
    tmp_path: Path, database_url: str, client_factory: Any
) -> None:
    storage, demo_count, _ = await _prepare(tmp_path, database_url)
    client, headers = await client_factory(database_url)
    before = await _api_state(client, headers)
    await client.aclose()
    rows_before = await _rows(database_url)
    await _drop(database_url)

    proc = _cli(database_url, storage, "--batch-size", "1")

    async def progressed() -> int:
        assert proc.poll() is None, "the run finished before it could be interrupted"
        try:
            conn = await asyncpg.connect(database_url)
        except (OSError, asyncpg.PostgresError):
            return 0
        try:
            return int(await conn.fetchval("SELECT max(indexed) FROM rebuild_runs") or 0)
        except asyncpg.UndefinedTableError:
            return 0
        finally:
            await conn.close()

    await eventually(progressed, 120, what="the first instances indexed", interval=0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI's own process group (its parser workers)
    await asyncio.to_thread(proc.wait)
    conn = await asyncpg.connect(database_url)
    try:
        stopped = await conn.fetchrow("SELECT * FROM rebuild_runs")
        half = await conn.fetchval("SELECT count(*) FROM instances")
    finally:
        await conn.close()
    assert stopped["status"] == "running" and stopped["checkpoint"], dict(stopped)
    assert 0 < half < demo_count

    code, out, err = await _finish(_cli(database_url, storage, "--batch-size", "4"))
    assert code == 0, (out, err)
    assert f"resuming run {stopped['id']} after {stopped['checkpoint']}" in err, err
    assert f"run {stopped['id']} completed (resumed)" in out, out
    assert f"indexed            {demo_count} instances" in out, out
    conn = await asyncpg.connect(database_url)
    try:
        ledger_rows = await conn.fetchval(
            "SELECT count(*) FROM ingest_files WHERE source = 'rebuild'"
        )
        runs = await conn.fetch("SELECT status, indexed FROM rebuild_runs")
    finally:
        await conn.close()
    assert ledger_rows == demo_count + 1  # every object once (the conflict copy included)
    assert [tuple(r) for r in runs] == [("completed", demo_count)]
    client, headers = await client_factory(database_url)
    assert await _api_state(client, headers) == before
    await client.aclose()
    assert await _rows(database_url) == rows_before


async def test_rebuild_from_gs_storage(
    tmp_path: Path,
    database_url: str,
    client_factory: Any,
    gcs_emulator: GcsEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same from `gs://` (the real client against the emulator): objects are listed in
    pages, downloaded a batch at a time and parsed in the pool; another prefix of the bucket
    is not this store's."""
    for name, value in gcs_emulator.env.items():
        monkeypatch.setenv(name, value)
    nas, demo_count = _demo(tmp_path)
    store = open_store(gcs_emulator.url("site-a"))
    pool = await create_pool(database_url, size=4)
    try:
        await migrate(pool)
        await _import_through_pipeline(pool, nas, store)
    finally:
        await pool.close()
    client, headers = await client_factory(database_url)
    before = await _api_state(client, headers)
    await client.aclose()
    rows_before = await _rows(database_url)
    assert rows_before["instances"][0]["storage_url"].startswith("gs://")
    some = rows_before["instances"][0]
    uids = (some["study_uid"], some["series_uid"], some["sop_instance_uid"])
    jpeg = tmp_path / "preview.jpg"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0 not a real jpeg")
    sha = hashlib.sha256(jpeg.read_bytes()).hexdigest()
    await store.put_file(preview_key(*uids, "preview"), jpeg, expected_sha256=sha)
    elsewhere = open_store(gcs_emulator.url("site-b"))
    await elsewhere.put_file("studies/1.2/1.2.3/1.2.3.4.dcm", jpeg, expected_sha256=sha)

    await _drop(database_url)
    proc = _cli_url(database_url, store.url, "--batch-size", "8")
    code, out, err = await _finish(proc)
    assert code == 0, (out, err)
    assert f"indexed            {demo_count} instances" in out, out
    assert "conflicting copies 1" in out and "skipped            1 (preview: 1)" in out, out
    client, headers = await client_factory(database_url)
    assert await _api_state(client, headers) == before
    await client.aclose()
    assert await _rows(database_url) == rows_before
