"""Header corrections served (ADR 0025 addendum): once a corrected copy of an instance is
indexed as a revision, what a clinician gets is the correction everywhere (QIDO, WADO-RS
metadata and bytes, WADO-URI, the archive and its ETag, the study detail) while the original
stays in storage; `rebuild-index` restores both. Real extractor, dedup, storage-writer and
indexer handlers, the API and a real packager over PostgreSQL and local storage."""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydicom import dcmread

from libs.db.archives import archive_listing
from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.dicom.extract import extract_many
from libs.http.proxy import ProxyTimeouts, upstream_client
from libs.imaging.isolated import IsolatedRenderer
from libs.runtime.probes import Readiness
from libs.runtime.sandbox import IsolatedExecutor
from libs.storage import instance_key
from libs.storage.local import LocalStore
from libs.tools.dev_broker import free_port
from libs.tools.rebuild import rebuild
from services.api.app import create_app
from services.api.config import ApiLimits
from services.api.dicomweb import DicomWebPorts, StowLimits
from services.api.previews import PreviewSource
from services.packager.app import create_app as create_packager
from services.packager.cache import ArchiveCache
from services.packager.packager import Encoding, Packager
from tests.conftest import PG_SERVER
from tests.integration.api.test_archives import Upstream
from tests.integration.test_header_revisions import SERIES, SOP, STUDY, Pipeline, _extracted
from tests.integration.test_header_revisions import _write as write_copy
from tests.integration.test_repositories import files

OLD, NEW = "Ivanov^Ivan", "Ivanova^Anna"


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore((tmp_path / "storage").as_uri())


@pytest.fixture
async def relay(
    pool: asyncpg.Pool, store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """A real packager on a loopback port, the API relaying archives to it."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")

    async def listings(study: str, series: str | None):  # type: ignore[no-untyped-def]
        async with pool.acquire() as conn:
            return await archive_listing(conn, study, series)

    async def publish(*_: object) -> None:
        return None

    cache = ArchiveCache(tmp_path / "archives", 1 << 30)
    cache.prepare()
    core = Packager(
        store=store, cache=cache, listings=listings, publish=publish, encoding=Encoding(3, 0)
    )
    upstream = Upstream(create_packager(pool, core, CollectorRegistry(), Readiness()), free_port())
    await upstream.start()
    client = upstream_client(f"http://127.0.0.1:{upstream.port}", ProxyTimeouts(read=60))
    yield client
    await client.aclose()
    await upstream.stop()


@pytest.fixture
def app(
    pool: asyncpg.Pool,
    registry: CollectorRegistry,
    store: LocalStore,
    relay: httpx.AsyncClient,
    tmp_path: Path,
) -> Iterator[FastAPI]:
    async def publish(event: object) -> None:
        raise AssertionError("nothing is published here")

    renderer = IsolatedRenderer(workers=1, memory_limit_mb=1024, timeout_s=30)
    ports = DicomWebPorts(
        store,
        PreviewSource(store, renderer),
        renderer.executor,
        publish=publish,
        stow=StowLimits(staging_dir=tmp_path, max_instance_bytes=1 << 20),
    )
    yield create_app(
        pool,
        publish,
        registry,
        Readiness(),
        limits=ApiLimits(),
        dicomweb=ports,
        packager=relay,
    )
    renderer.close()


def _name(item: dict[str, Any]) -> str:
    return str(item["00100010"]["Value"][0]["Alphabetic"])


async def _state(client: httpx.AsyncClient, auth: dict[str, str]) -> dict[str, Any]:
    """What a clinician gets of the study: searched, its metadata, its bytes (WADO-RS and
    WADO-URI), its archive (ETag, the file in it, the DICOMDIR's patient) and its detail."""
    qido = await client.get("/dicom-web/studies", params={"StudyInstanceUID": STUDY}, headers=auth)
    assert qido.status_code == 200, qido.text
    base = f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
    meta = await client.get(f"{base}/metadata", headers=auth)
    assert meta.status_code == 200, meta.text
    wado = await client.get(
        base,
        headers={
            **auth,
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
        },
    )
    assert wado.status_code == 200, wado.text
    uri = await client.get(
        "/dicom-web/wado",
        params={
            "requestType": "WADO",
            "studyUID": STUDY,
            "seriesUID": SERIES,
            "objectUID": SOP,
            "contentType": "application/dicom",
        },
        headers=auth,
    )
    assert uri.status_code == 200, uri.text
    archive = await client.get(
        f"/v1/studies/{STUDY}/archive", params={"format": "zip"}, headers=auth
    )
    assert archive.status_code == 200, archive.text
    with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
        names = z.namelist()
        dicomdir = next(n for n in names if n.endswith("DICOMDIR"))
        (member,) = [n for n in names if n != dicomdir and not n.endswith((".json", ".txt"))]
        archived, directory = z.read(member), z.read(dicomdir)
    patients = [
        str(r.PatientName)
        for r in dcmread(io.BytesIO(directory)).DirectoryRecordSequence
        if r.DirectoryRecordType == "PATIENT"
    ]
    detail = await client.get(f"/v1/studies/{STUDY}", headers=auth)
    assert detail.status_code == 200, detail.text
    return {
        "qido": _name(qido.json()[0]),
        "metadata": _name(meta.json()[0]),
        "wado": wado.content,
        "wado_uri": uri.content,
        "etag": archive.headers["etag"],
        "archived": archived,
        "dicomdir": patients,
        "detail": detail.json(),
    }


async def test_a_correction_is_what_every_path_serves_and_rebuild_restores_it(
    pool: asyncpg.Pool,
    store: LocalStore,
    client: httpx.AsyncClient,
    keys: Any,
    tmp_path: Path,
    migrated_template: str,
) -> None:
    auth = keys.headers("clinician")
    pipeline = Pipeline(pool, store)
    original = write_copy(tmp_path / "original.dcm", OLD)
    corrected = write_copy(tmp_path / "corrected.dcm", NEW)
    ids = await files(pool, 2)
    await pipeline.run(_extracted(original, ids[0]))
    before = await _state(client, auth)
    assert before["archived"] == before["wado_uri"] == original.read_bytes()

    verdict = await pipeline.run(_extracted(corrected, ids[1]))
    assert verdict.disposition == "revision"  # type: ignore[union-attr]
    after = await _state(client, auth)
    assert after["qido"] == after["metadata"] == NEW
    assert corrected.read_bytes() in after["wado"] and original.read_bytes() not in after["wado"]
    assert after["wado_uri"] == after["archived"] == corrected.read_bytes()
    assert after["dicomdir"] == [NEW]
    assert after["etag"] != before["etag"], "the archive changed: so must its ETag"
    assert after["detail"]["patient"]["patient_name"] == NEW
    assert [(c["sop_instance_uid"], c["revision"]) for c in after["detail"]["corrections"]] == [
        (SOP, 2)
    ]
    # The original is kept, at its own key, for audit.
    canonical = store.path_for(instance_key(STUDY, SERIES, SOP))
    assert canonical.read_bytes() == original.read_bytes()

    # The original redelivered (at-least-once) does not put the old header back.
    await pipeline.run(_extracted(original, ids[0]))
    again = await _state(client, auth)
    for what in ("qido", "metadata", "wado_uri", "etag", "archived", "dicomdir"):
        assert again[what] == after[what], what
    assert again["detail"]["patient"] == after["detail"]["patient"]

    # rebuild-index into an empty database gives the same index: the original and its
    # correction, the correction served.
    async with pool.acquire() as conn:
        rows = await _rows(conn)
    name = f"dicomflow_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(f"{PG_SERVER}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    rebuilt = await create_pool(f"{PG_SERVER}/{name}", size=4)
    executor = IsolatedExecutor(1, 1024, 60.0, preload=(extract_many.__module__,))
    try:
        await migrate(rebuilt)
        out, err = io.StringIO(), io.StringIO()
        code = await rebuild(rebuilt, store, executor, batch_size=1, out=out, err=err)
        assert code == 0, (out.getvalue(), err.getvalue())
        async with rebuilt.acquire() as conn:
            assert await _rows(conn) == rows
    finally:
        executor.close()
        await rebuilt.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _rows(conn: asyncpg.Connection) -> dict[str, Any]:
    """The index's rows of the instance and its revisions, without ids and times."""
    instance = await conn.fetchrow(
        """SELECT sop_instance_uid, study_uid, series_uid, revision, revision_key, size_bytes,
                  file_sha256, content_sha256, dicom_json
             FROM instances WHERE sop_instance_uid = $1""",
        SOP,
    )
    revisions = await conn.fetch(
        """SELECT revision, study_uid, file_sha256, header FROM instance_revisions
            WHERE sop_instance_uid = $1 ORDER BY revision""",
        SOP,
    )
    patient = await conn.fetchval(
        """SELECT p.patient_name FROM studies s JOIN patients p ON p.id = s.patient_pk
            WHERE s.study_uid = $1""",
        STUDY,
    )
    return {
        "instance": dict(instance) if instance else None,
        "revisions": [dict(r) for r in revisions],
        "patient": patient,
    }
