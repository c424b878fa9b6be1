"""POST/GET /v1/retrieve: roles, validation (the body, a PACS the watcher registered), the
task and its request stored, progress as the watcher records it, and the task store's lease."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from libs.db import ledger, retrieves, tasks
from libs.db.retrieves import StudyRow

PACS = ("main", "MAINPACS", "move")
STUDY = {"pacs": "main", "study_uid": "1.2.826.0.1.3680043.8.498.1"}


@pytest.fixture(autouse=True)
async def peers(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await retrieves.register_peers(conn, [PACS, ("other", "OTHER", "get")])


async def test_ops_creates_a_retrieve_task(client, keys, pool, audit_rows):
    response = await client.post("/v1/retrieve", json=STUDY, headers=keys.headers("ops"))
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    assert response.json()["status"] == "pending"
    row = await pool.fetchrow(
        "SELECT t.kind, t.source_path, t.status, r.pacs, r.request FROM import_tasks t"
        " JOIN pacs_retrieves r ON r.task_id = t.id WHERE t.id = $1",
        uuid.UUID(task_id),
    )
    assert (row["kind"], row["source_path"], row["status"], row["pacs"]) == (
        "retrieve",
        "pacs:main",
        "pending",
        "main",
    )
    assert json.loads(row["request"]) == {**STUDY, "description": ""}
    [*_, audit] = await audit_rows("retrieve.create")
    assert (audit["status_code"], audit["role"], audit["result_count"]) == (202, "ops", 1)

    shown = await client.get(f"/v1/retrieve/{task_id}", headers=keys.headers("ops"))
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert (body["task_id"], body["kind"], body["status"]) == (task_id, "retrieve", "pending")
    assert body["retrieve"]["pacs"] == "main"
    assert body["retrieve"]["request"]["study_uid"] == STUDY["study_uid"]
    assert body["retrieve"]["progress"]["studies_matched"] == 0
    [*_, read] = await audit_rows("retrieve.read")
    assert (read["status_code"], read["result_count"]) == (200, 1)


@pytest.mark.parametrize("role", ["clinician"])
async def test_without_role_ops_is_403(client, keys, pool, role, audit_rows):
    before = await pool.fetchval("SELECT count(*) FROM pacs_retrieves")
    response = await client.post("/v1/retrieve", json=STUDY, headers=keys.headers(role))
    assert response.status_code == 403
    assert await pool.fetchval("SELECT count(*) FROM pacs_retrieves") == before
    [*_, denied] = await audit_rows("retrieve.create")
    assert (denied["status_code"], denied["role"]) == (403, role)
    some = uuid.uuid4()
    assert (await client.get(f"/v1/retrieve/{some}", headers=keys.headers(role))).status_code == 403


async def test_without_a_key_is_401(client):
    assert (await client.post("/v1/retrieve", json=STUDY)).status_code == 401


async def test_admin_may_too(client, keys):
    response = await client.post("/v1/retrieve", json=STUDY, headers=keys.headers("admin"))
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"pacs": "nowhere", "study_uid": "1.2.3"}, "unknown PACS 'nowhere'; known: main, other"),
        ({"pacs": "main"}, "exactly one of study_uid or query"),
        ({"pacs": "main", "study_uid": "1.2", "query": {"patient_id": "P1"}}, "exactly one"),
        ({"pacs": "main", "query": {}}, "at least one of"),
        ({"pacs": "main", "query": {"patient_id": "*"}}, "pattern"),
        ({"pacs": "main", "study_uid": "1.2.x"}, "not a DICOM UID"),
        (
            {
                "pacs": "main",
                "query": {"study_date_from": "2024-02-01", "study_date_to": "2024-01-01"},
            },
            "must not be after",
        ),
        ({"pacs": "main", "study_uid": "1.2", "extra": 1}, "Extra inputs"),
    ],
)
async def test_bad_bodies_are_422(client, keys, pool, body, fragment):
    before = await pool.fetchval("SELECT count(*) FROM import_tasks")
    response = await client.post("/v1/retrieve", json=body, headers=keys.headers("ops"))
    assert response.status_code == 422, response.text
    assert fragment in response.text
    assert await pool.fetchval("SELECT count(*) FROM import_tasks") == before


async def test_unknown_task_is_404(client, keys):
    response = await client.get(f"/v1/retrieve/{uuid.uuid4()}", headers=keys.headers("ops"))
    assert response.status_code == 404
    folder = await client.post(
        "/v1/imports", json={"source_path": "/nas/x"}, headers=keys.headers("ops")
    )
    other = folder.json()["task_id"]  # an import task, not a retrieve
    response = await client.get(f"/v1/retrieve/{other}", headers=keys.headers("ops"))
    assert response.status_code == 404


async def test_progress_as_the_watcher_records_it(client, keys, pool):
    response = await client.post(
        "/v1/retrieve",
        json={"pacs": "main", "query": {"patient_id": "P7", "modality": "mr"}},
        headers=keys.headers("ops"),
    )
    task_id = response.json()["task_id"]
    async with pool.acquire() as conn:
        await conn.execute(  # older tests' tasks: out of the way
            "UPDATE import_tasks SET status = 'completed', scan_completed = true WHERE id <> $1",
            uuid.UUID(task_id),
        )
        leased = await retrieves.lease_next(conn, pacs="main", owner="w1", lease_seconds=60)
        assert leased is not None and leased[0].id == task_id
        assert leased[1].request == {
            "pacs": "main",
            "query": {"patient_id": "P7", "modality": "MR"},
            "description": "",
        }
        rows = [StudyRow("1.9.1", 4, "pending"), StudyRow("1.9.2", 2, "skipped")]
        await retrieves.set_studies(conn, task_id, "move", rows)
        await retrieves.update_study(
            conn, task_id, StudyRow("1.9.1", 4, "retrieving", completed=1, remaining=3)
        )
    body = (await client.get(f"/v1/retrieve/{task_id}", headers=keys.headers("ops"))).json()
    assert body["status"] == "running"
    progress = body["retrieve"]["progress"]
    assert (progress["studies_matched"], progress["studies_skipped"]) == (2, 1)
    assert (progress["instances_completed"], progress["instances_remaining"]) == (1, 3)
    assert body["retrieve"]["method"] == "move"
    assert [s["status"] for s in body["retrieve"]["studies"]] == ["retrieving", "skipped"]

    async with pool.acquire() as conn:
        await retrieves.update_study(
            conn, task_id, StudyRow("1.9.1", 4, "done", completed=4, remaining=0)
        )
        assert await ledger.finish_task_scan(conn, task_id)  # C-MOVE: no ledger rows
    body = (await client.get(f"/v1/retrieve/{task_id}", headers=keys.headers("ops"))).json()
    assert body["status"] == "completed"
    assert body["retrieve"]["progress"]["studies_retrieved"] == 1
    listed = await client.get("/v1/imports", headers=keys.headers("ops"))
    assert task_id in {t["task_id"] for t in listed.json()["items"]}  # one task list


async def test_lease_backoff_and_failure(pool):
    async with pool.acquire() as conn:
        await conn.execute("UPDATE import_tasks SET status = 'completed', scan_completed = true")
        task = await retrieves.create(
            conn, retrieves.RetrieveRequest.model_validate(STUDY), created_by=None
        )
        assert await retrieves.lease_next(conn, pacs="other", owner="w1", lease_seconds=60) is None
        first = await retrieves.lease_next(conn, pacs="main", owner="w1", lease_seconds=60)
        assert first is not None and first[0].id == task.id
        # a second replica never takes a leased task
        assert await retrieves.lease_next(conn, pacs="main", owner="w2", lease_seconds=60) is None
        assert await retrieves.defer(conn, task.id, error="away", delay_seconds=3600) == 1
        # released, but not due before its backoff is over
        assert await retrieves.lease_next(conn, pacs="main", owner="w2", lease_seconds=60) is None
        await retrieves.defer(conn, task.id, error="db", delay_seconds=0, count=False)
        again = await retrieves.lease_next(conn, pacs="main", owner="w2", lease_seconds=60)
        assert again is not None and again[1].attempts == 1 and again[1].last_error == "db"
        await tasks.fail_task(conn, task.id, "PACS main unreachable after 5 attempts: x")
        assert await retrieves.lease_next(conn, pacs="main", owner="w2", lease_seconds=60) is None
