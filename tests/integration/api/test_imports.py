"""POST/GET /v1/imports: the task row, the published event, counters from the ledger."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from libs.contracts.events import ImportRequested


async def _create(client, keys, source_path: str = "/nas/import/batch-1", **extra: Any):
    body = {"source_path": source_path, "description": "ward 3 archive", **extra}
    return await client.post("/v1/imports", json=body, headers=keys.headers("ops"))


async def test_create_returns_202_and_publishes_the_task(client, keys, publisher, pool):
    response = await _create(client, keys)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending"
    task_id = body["task_id"]
    uuid.UUID(task_id)
    [event] = publisher.events
    assert isinstance(event, ImportRequested)
    assert (event.task_id, event.correlation_id, event.source) == (task_id, task_id, "api")
    assert event.source_path == "/nas/import/batch-1"
    row = await pool.fetchrow("SELECT * FROM import_tasks WHERE id = $1", uuid.UUID(task_id))
    assert (row["status"], row["source_path"], row["description"]) == (
        "pending",
        "/nas/import/batch-1",
        "ward 3 archive",
    )
    ops_key = await pool.fetchval(
        "SELECT id FROM api_keys WHERE key_prefix = $1 ORDER BY id DESC LIMIT 1",
        keys.plain["ops"][:8],
    )
    assert row["created_by"] == f"apikey:{ops_key}"


@pytest.mark.parametrize("failure", ["error", "hang"])
async def test_task_survives_a_failed_publish(client, keys, publisher, pool, failure):
    """The watcher polls pending tasks, so a lost event only delays the import."""
    if failure == "error":
        publisher.error = ConnectionError("broker down")
    else:
        publisher.hang = True  # the app waits publish_timeout_seconds (0.5 s in tests)
    response = await _create(client, keys, "/nas/import/lost-event")
    assert response.status_code == 202
    task_id = uuid.UUID(response.json()["task_id"])
    assert publisher.events == []
    status = await pool.fetchval("SELECT status FROM import_tasks WHERE id = $1", task_id)
    assert status == "pending"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"source_path": "relative/dir"}, "absolute path"),
        ({"source_path": "/nas/a\u0000b"}, "NUL"),
        ({"source_path": ""}, "at least 1 character"),
        ({"description": "no path"}, "Field required"),
        ({"source_path": "/nas", "priority": 1}, "Extra inputs are not permitted"),
        ({"source_path": "/nas", "description": "x" * 1001}, "at most 1000 characters"),
    ],
)
async def test_invalid_body_is_422(client, keys, publisher, body, fragment):
    response = await client.post("/v1/imports", json=body, headers=keys.headers("ops"))
    assert response.status_code == 422
    assert fragment in response.text
    assert publisher.events == []


async def _ledger(pool: asyncpg.Pool, task_id: str, rows: list[tuple[str, str | None]]) -> None:
    for n, (status, reason) in enumerate(rows):
        await pool.execute(
            """INSERT INTO ingest_files (task_id, source, uri, size, correlation_id, status,
                                         reason, stage)
               VALUES ($1, 'nas', $2, 10, $6, $3, $4, $5)""",
            uuid.UUID(task_id),
            f"file:///nas/import/batch-1/{n}.dcm",
            status,
            reason,
            "extractor" if status == "failed" else None,
            task_id,
        )


async def test_status_has_counters_from_the_ledger(client, keys, pool):
    task_id = (await _create(client, keys)).json()["task_id"]
    await _ledger(
        pool,
        task_id,
        [
            ("indexed", None),
            ("indexed", None),
            ("indexed", "same_content_other_uid"),
            ("duplicate", None),
            ("conflict", "same SOPInstanceUID, different content"),
            ("failed", "not a DICOM file"),
            ("pending", None),
            ("pending", None),
        ],
    )
    response = await client.get(f"/v1/imports/{task_id}", headers=keys.headers("ops"))
    assert response.status_code == 200
    body = response.json()
    assert body["task_id"] == task_id
    assert (body["status"], body["source_path"], body["scan_completed"]) == (
        "pending",
        "/nas/import/batch-1",
        False,
    )
    assert body["counters"] == {
        "files_scanned": 8,
        "pending": 2,
        "new_instances": 3,
        "flagged_same_content": 1,
        "header_revisions": 0,
        "duplicates": 1,
        "conflicts": 1,
        "failed": 1,
        "cancelled": 0,
        "patients_found": 0,
        "patients_new": 0,
        "failures": [
            {
                "uri": "file:///nas/import/batch-1/5.dcm",
                "origin": "",
                "stage": "extractor",
                "reason": "not a DICOM file",
            }
        ],
    }


async def test_unknown_task_is_404_and_malformed_id_422(client, keys):
    unknown = await client.get(f"/v1/imports/{uuid.uuid4()}", headers=keys.headers("ops"))
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "import task not found"}
    malformed = await client.get("/v1/imports/not-a-task", headers=keys.headers("ops"))
    assert malformed.status_code == 422


async def test_list_filters_by_status_and_pages(client, keys, pool):
    created = [(await _create(client, keys, f"/nas/list/{n}")).json()["task_id"] for n in range(3)]
    await pool.execute(
        "UPDATE import_tasks SET status = 'failed', error = 'outside roots' WHERE id = $1",
        uuid.UUID(created[0]),
    )
    await _ledger(pool, created[2], [("indexed", None)])
    listed = await client.get("/v1/imports", params={"limit": 500}, headers=keys.headers("ops"))
    assert listed.status_code == 200
    items = {t["task_id"]: t for t in listed.json()["items"]}
    assert set(created) <= set(items)
    assert items[created[2]]["counters"]["new_instances"] == 1
    failed = await client.get(
        "/v1/imports", params={"status": "failed"}, headers=keys.headers("ops")
    )
    assert [t["task_id"] for t in failed.json()["items"]] == [created[0]]
    assert failed.json()["items"][0]["error"] == "outside roots"
    page = await client.get(
        "/v1/imports", params={"limit": 2, "offset": 1}, headers=keys.headers("ops")
    )
    assert (page.json()["limit"], page.json()["offset"], len(page.json()["items"])) == (2, 1, 2)
    bad = await client.get("/v1/imports", params={"status": "done"}, headers=keys.headers("ops"))
    assert bad.status_code == 422


async def test_import_calls_are_audited(client, keys, audit_rows):
    task_id = (await _create(client, keys, "/nas/audited")).json()["task_id"]
    await client.get(f"/v1/imports/{task_id}", headers=keys.headers("admin"))
    [*_, create] = await audit_rows("import.create")
    assert (create["role"], create["status_code"], create["result_count"]) == ("ops", 202, 1)
    [*_, read] = await audit_rows("import.read")
    assert (read["role"], read["path"], read["status_code"]) == (
        "admin",
        f"/v1/imports/{task_id}",
        200,
    )
