"""De-identified exports through the API: a real index and local storage, the export round
run with its real isolated worker pool, the archive downloaded and read back by pydicom and
DCMTK's dcmdump. Two patients, three studies; a reference between instances; one instance
flagged BurnedInAnnotation YES and one ultrasound without the attribute."""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import asyncpg
import httpx
import pydicom
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from libs.db import exports
from libs.db.index import index_instance
from libs.deid.deidentify import Keys
from libs.dicom.synthetic import make_dataset, write_instance
from libs.runtime.probes import Readiness
from libs.runtime.sandbox import IsolatedExecutor
from libs.storage import instance_key
from libs.storage.local import LocalStore
from services.api.app import create_app
from services.api.config import ApiLimits
from services.api.exports import ExportLimits, ExportMetrics, ExportRunner, StorageUnavailable
from tests.integration.api.conftest import AuditRows
from tests.integration.api.conftest import Keys as ApiKeys
from tests.integration.test_jpg_converter_service import put_canonical

ROOT = "1.2.826.0.1.3680043.10.7"
# (patient id, name, study number, date, [(series, modality, instances)])
STUDIES = [
    ("DEID-A", "Sidorov^Petr", 1, "20240115", [(1, "CT", 3), (2, "CT", 2)]),
    ("DEID-A", "Sidorov^Petr", 2, "20240320", [(1, "MR", 2)]),
    ("DEID-B", "Kuznetsova^Olga", 3, "20240201", [(1, "CT", 2)]),
]
# Studies the failure tests damage in storage: 4 loses one object and has one corrupted,
# 5 loses all of them (as when the storage is not mounted).
DAMAGED = [
    ("DEID-C", "Popov^Ivan", 4, "20240501", [(1, "CT", 3)]),
    ("DEID-C", "Popov^Ivan", 5, "20240601", [(1, "CT", 2)]),
]
BURNED_IN = f"{ROOT}.1.2.2"  # series 2 of study 1, instance 2: BurnedInAnnotation YES
ULTRASOUND = f"{ROOT}.1.2.1"  # modality US, no BurnedInAnnotation
REFERRING = f"{ROOT}.1.1.2"  # refers to instance 1 of the same series


def _datasets() -> list[Dataset]:
    out = []
    for pid, name, study, day, series_list in STUDIES + DAMAGED:
        for series, modality, count in series_list:
            for n in range(1, count + 1):
                ds = make_dataset(
                    patient_id=pid,
                    patient_name=name,
                    birth_date="19700101",
                    study_uid=f"{ROOT}.{study}",
                    series_uid=f"{ROOT}.{study}.{series}",
                    sop_uid=f"{ROOT}.{study}.{series}.{n}",
                    modality=modality,
                    study_date=day,
                    accession=f"ACC{study}",
                    study_description=f"{modality} for {name.split('^')[0]}",
                    series_number=series,
                    instance_number=n,
                    rows=16,
                    columns=16,
                )
                ds.InstitutionName = "Hospital of Nowhere"
                ds.ReferringPhysicianName = "Doctor^Who"
                if ds.SOPInstanceUID == REFERRING:
                    ref = Dataset()
                    ref.ReferencedSOPClassUID = ds.SOPClassUID
                    ref.ReferencedSOPInstanceUID = f"{ROOT}.1.1.1"
                    ds.ReferencedImageSequence = Sequence([ref])
                if ds.SOPInstanceUID == BURNED_IN:
                    ds.BurnedInAnnotation = "YES"
                if ds.SOPInstanceUID == ULTRASOUND:
                    ds.Modality = "US"
                out.append(ds)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    return LocalStore(tmp_path_factory.mktemp("storage").as_uri())


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("sources")
    paths = []
    for n, ds in enumerate(_datasets()):
        write_instance(root / f"{n}.dcm", ds)
        paths.append(root / f"{n}.dcm")
    return paths


@pytest.fixture(autouse=True)
async def seeded(pool: asyncpg.Pool, store: LocalStore, sources: list[Path]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE instances")
        if await conn.fetchval("SELECT count(*) FROM instances"):
            return
        for file_id, path in enumerate(sources, start=1):
            await index_instance(conn, await put_canonical(store, path, file_id))


@pytest.fixture(scope="module")
def executor() -> AsyncIterator[IsolatedExecutor]:
    pool = IsolatedExecutor(1, 512, 60.0, preload=("libs.deid.files",))
    yield pool  # type: ignore[misc]
    pool.close()


@pytest.fixture
def exports_dir(tmp_path: Path) -> Path:
    return tmp_path / "exports"


@pytest.fixture
def runner(
    pool: asyncpg.Pool, store: LocalStore, executor: IsolatedExecutor, exports_dir: Path
) -> ExportRunner:
    exports_dir.mkdir()
    return ExportRunner(pool, store, executor, exports_dir, owner="test-runner")


@pytest.fixture
def app(pool: asyncpg.Pool, exports_dir: Path) -> FastAPI:  # overrides the conftest's
    async def publish(_: object) -> None:
        return None

    return create_app(
        pool, publish, CollectorRegistry(), Readiness(), limits=ApiLimits(), exports_dir=exports_dir
    )


STUDY_UIDS = [f"{ROOT}.{s[2]}" for s in STUDIES]


async def _export(
    client: httpx.AsyncClient, keys: ApiKeys, runner: ExportRunner, **body: object
) -> tuple[dict[str, object], zipfile.ZipFile]:
    created = await client.post(
        "/v1/exports", json={"study_uids": STUDY_UIDS, **body}, headers=keys.headers("ops")
    )
    assert created.status_code == 202, created.text
    export_id = created.json()["export_id"]
    queued = await client.get(f"/v1/exports/{export_id}", headers=keys.headers("ops"))
    assert queued.json()["status"] == "queued"
    early = await client.get(f"/v1/exports/{export_id}/archive", headers=keys.headers("ops"))
    assert early.status_code == 409
    while await runner.round() is not None:  # what the API's periodic round does
        pass
    job = (await client.get(f"/v1/exports/{export_id}", headers=keys.headers("ops"))).json()
    assert job["status"] == "completed", job
    got = await client.get(job["archive_url"], headers=keys.headers("ops"))
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/zip"
    assert int(got.headers["content-length"]) == job["archive_size"] == len(got.content)
    resumed = await client.get(
        job["archive_url"], headers={**keys.headers("ops"), "Range": "bytes=100-"}
    )
    assert resumed.status_code == 206 and resumed.content == got.content[100:]
    return job, zipfile.ZipFile(io.BytesIO(got.content))


async def test_export_is_de_identified_consistent_and_valid_dicom(
    client: httpx.AsyncClient,
    keys: ApiKeys,
    runner: ExportRunner,
    pool: asyncpg.Pool,
    sources: list[Path],
    tmp_path: Path,
) -> None:
    body = {"profile": {"modified_dates": True, "clean_descriptors": True}}
    job, archive = await _export(client, keys, runner, **body)
    progress = job["progress"]
    assert progress == {
        "total": 9,
        "processed": 9,
        "exported": 7,
        "excluded": 2,
        "failed": 0,
        "percent": 100.0,
    }
    left_out = {o["original"]["sop_uid"]: o["reason"] for o in job["left_out"]}
    assert set(left_out) == {BURNED_IN, ULTRASOUND}
    assert "BurnedInAnnotation is YES" in left_out[BURNED_IN]

    manifest = json.loads(archive.read("manifest.json"))
    assert {o["outcome"] for o in manifest["left_out"]} == {"excluded"}
    assert "original" not in json.dumps(manifest["left_out"])  # no stored UID in the archive
    async with pool.acquire() as conn:
        keys_ = Keys(await exports.secret(conn))
    assert {o["sop_uid"] for o in manifest["left_out"]} == {
        keys_.uid(BURNED_IN),
        keys_.uid(ULTRASOUND),
    }

    members = [n for n in archive.namelist() if n.endswith(".dcm")]
    assert len(members) == len(manifest["files"]) == 7
    originals = [ds for ds in map(pydicom.dcmread, sources) if ds.StudyInstanceUID in STUDY_UIDS]
    secrets = {b"Sidorov", b"Kuznetsova", b"DEID-A", b"DEID-B", b"ACC1", b"Nowhere", b"Who"}
    secrets |= {o.StudyInstanceUID.encode() for o in originals}
    by_sop: dict[str, Dataset] = {}
    for name in members:
        data = archive.read(name)
        assert not [s for s in secrets if s in data], name  # nothing identifying, anywhere
        path = tmp_path / "check.dcm"
        path.write_bytes(data)
        dumped = subprocess.run(
            ["dcmdump", "-q", "+E", str(path)], capture_output=True, text=True, check=False
        )
        assert dumped.returncode == 0 and "E:" not in dumped.stderr, dumped.stderr
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.pixel_array.shape == (16, 16)
        by_sop[ds.SOPInstanceUID] = ds

    # UIDs: one new study UID per study, one series UID per series, references followed.
    for original in originals:
        new_sop = keys_.uid(original.SOPInstanceUID)
        if original.SOPInstanceUID in (BURNED_IN, ULTRASOUND):
            assert new_sop not in by_sop
            continue
        ds = by_sop[new_sop]
        assert ds.StudyInstanceUID == keys_.uid(original.StudyInstanceUID)
        assert ds.SeriesInstanceUID == keys_.uid(original.SeriesInstanceUID)
        assert ds.PatientID == ds.PatientName == keys_.pseudonym(original.PatientID)
        shift = (date.fromisoformat(ds.StudyDate) - date.fromisoformat(original.StudyDate)).days
        assert shift == keys_.shift_days(original.PatientID)  # one offset per patient
        assert ds.StudyDescription == f"{original.Modality} for *"  # cleaned, not removed
    referring = by_sop[keys_.uid(REFERRING)]
    assert referring.ReferencedImageSequence[0].ReferencedSOPInstanceUID in by_sop
    study_uids = {ds.StudyInstanceUID for ds in by_sop.values()}
    assert len(study_uids) == 3
    patients = {ds.PatientID for ds in by_sop.values()}
    assert len(patients) == 2


async def test_burned_in_instances_come_when_asked(
    client: httpx.AsyncClient, keys: ApiKeys, runner: ExportRunner
) -> None:
    job, archive = await _export(client, keys, runner, include_burned_in=True)
    assert job["progress"]["exported"] == 9 and job["left_out"] == []
    flagged = [
        ds
        for ds in (
            pydicom.dcmread(io.BytesIO(archive.read(n)))
            for n in archive.namelist()
            if n.endswith(".dcm")
        )
        if "BurnedInAnnotation" in ds
    ]
    assert [ds.BurnedInAnnotation for ds in flagged] == ["YES"]
    assert not [n for n in archive.namelist() if "manifest" not in n and not n.endswith(".dcm")]


async def test_only_ops_may_export_and_every_call_is_audited(
    client: httpx.AsyncClient, keys: ApiKeys, audit_rows: AuditRows
) -> None:
    body = {"study_uids": STUDY_UIDS[:1]}
    refused = await client.post("/v1/exports", json=body, headers=keys.headers("clinician"))
    assert refused.status_code == 403
    unknown = await client.post(
        "/v1/exports", json={"study_uids": ["1.2.3.999"]}, headers=keys.headers("ops")
    )
    assert unknown.status_code == 422
    unsupported = await client.post(
        "/v1/exports",
        json={**body, "profile": {"retain_uids": True}},
        headers=keys.headers("ops"),
    )
    assert unsupported.status_code == 422  # an option we do not implement is refused
    created = await client.post("/v1/exports", json=body, headers=keys.headers("admin"))
    assert created.status_code == 202
    export_id = created.json()["export_id"]
    read = await client.get(f"/v1/exports/{export_id}", headers=keys.headers("clinician"))
    assert read.status_code == 403
    rows = await audit_rows("export.create")
    statuses = [(r["role"], r["status_code"]) for r in rows]
    assert ("clinician", 403) in statuses and ("admin", 202) in statuses
    done = next(r for r in rows if r["status_code"] == 202 and r["role"] == "admin")
    assert done["query"]["export_id"] == export_id
    assert done["query"]["study_uids"] == STUDY_UIDS[:1]
    assert done["client"] == "10.1.2.3"
    reads = await audit_rows("export.read")
    assert [r["status_code"] for r in reads if r["role"] == "clinician"] == [403]
    missing = await client.get(
        "/v1/exports/00000000-0000-0000-0000-000000000000", headers=keys.headers("ops")
    )
    assert missing.status_code == 404


def _object(store: LocalStore, study: int, n: int) -> Path:
    return store.path_for(
        instance_key(f"{ROOT}.{study}", f"{ROOT}.{study}.1", f"{ROOT}.{study}.1.{n}")
    )


async def test_missing_and_unreadable_instances_are_listed_and_the_rest_exported(
    client: httpx.AsyncClient, keys: ApiKeys, runner: ExportRunner, store: LocalStore
) -> None:
    _object(store, 4, 1).unlink()
    _object(store, 4, 2).write_bytes(b"not DICOM at all" * 64)
    created = await client.post(
        "/v1/exports", json={"study_uids": [f"{ROOT}.4"]}, headers=keys.headers("ops")
    )
    while await runner.round() is not None:
        pass
    job = (
        await client.get(f"/v1/exports/{created.json()['export_id']}", headers=keys.headers("ops"))
    ).json()
    assert job["status"] == "completed"
    assert (job["progress"]["exported"], job["progress"]["failed"]) == (1, 2)
    reasons = {o["original"]["sop_uid"]: o["reason"] for o in job["left_out"]}
    assert reasons[f"{ROOT}.4.1.1"] == "missing from storage"
    assert "InvalidDicomError" in reasons[f"{ROOT}.4.1.2"]
    archive = zipfile.ZipFile(
        io.BytesIO((await client.get(job["archive_url"], headers=keys.headers("ops"))).content)
    )
    manifest = json.loads(archive.read("manifest.json"))
    assert [o["outcome"] for o in manifest["left_out"]] == ["failed", "failed"]
    assert len(manifest["files"]) == 1


async def test_unreachable_storage_is_waited_for_then_the_export_fails(
    client: httpx.AsyncClient,
    keys: ApiKeys,
    pool: asyncpg.Pool,
    store: LocalStore,
    executor: IsolatedExecutor,
    exports_dir: Path,
) -> None:
    for n in (1, 2):
        _object(store, 5, n).unlink()
    exports_dir.mkdir()
    registry = CollectorRegistry()
    runner = ExportRunner(
        pool,
        store,
        executor,
        exports_dir,
        limits=ExportLimits(max_attempts=2),
        owner="t",
        metrics=ExportMetrics.create(registry),
    )
    created = await client.post(
        "/v1/exports", json={"study_uids": [f"{ROOT}.5"]}, headers=keys.headers("ops")
    )
    url = f"/v1/exports/{created.json()['export_id']}"
    for attempt in (1, 2):
        with pytest.raises(StorageUnavailable):
            await runner.round()
        job = (await client.get(url, headers=keys.headers("ops"))).json()
        assert job["status"] == "queued" and "none of 2 instances read" in job["error"], attempt
    while await runner.round() is not None:
        pass
    job = (await client.get(url, headers=keys.headers("ops"))).json()
    assert job["status"] == "failed"
    assert job["error"].startswith("gave up after 2 attempts")
    runs = "dicomflow_api_exports_total"
    assert registry.get_sample_value(runs, {"status": "retried"}) == 2
    assert registry.get_sample_value(runs, {"status": "failed"}) == 1
    assert not list(exports_dir.iterdir())  # no archive, no scratch left behind


async def test_a_stopping_api_gives_the_export_back_and_the_next_round_finishes_it(
    client: httpx.AsyncClient, keys: ApiKeys, runner: ExportRunner, pool: asyncpg.Pool
) -> None:
    created = await client.post(
        "/v1/exports", json={"study_uids": STUDY_UIDS[2:]}, headers=keys.headers("ops")
    )
    url = f"/v1/exports/{created.json()['export_id']}"
    runner.stopping.set()  # SIGTERM: the round gives the job back before its next instance
    assert await runner.round() is None
    job = (await client.get(url, headers=keys.headers("ops"))).json()
    assert (job["status"], job["error"]) == ("queued", "interrupted by a restart")
    attempts = await pool.fetchval(
        "SELECT attempts FROM export_jobs WHERE id = $1", job["export_id"]
    )
    assert attempts == 0  # a restart is not an attempt
    runner.stopping.clear()  # the next process
    while await runner.round() is not None:
        pass
    job = (await client.get(url, headers=keys.headers("ops"))).json()
    assert (job["status"], job["error"], job["progress"]["exported"]) == ("completed", None, 2)
