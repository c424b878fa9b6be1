"""Pause, resume and cancel an import; its breakdown and its live progress (real PostgreSQL,
the app in process; the same gate the extractor runs decides what happens to queued files)."""

from __future__ import annotations

import json
import uuid
from datetime import date

import asyncpg
import pytest

from libs.contracts.events import FileDiscovered
from libs.db import ledger, task_control


async def _task(client, keys, path: str = "/nas/control") -> str:
    r = await client.post("/v1/imports", json={"source_path": path}, headers=keys.headers("ops"))
    assert r.status_code == 202, r.text
    return str(r.json()["task_id"])


async def _files(pool: asyncpg.Pool, task_id: str, n: int, prefix: str = "f") -> list[int]:
    ids = []
    for i in range(n):
        ids.append(
            await pool.fetchval(
                """INSERT INTO ingest_files (task_id, source, uri, origin, size, correlation_id)
                   VALUES ($1, 'nas', $2, $3, 100, $4) RETURNING id""",
                uuid.UUID(task_id),
                f"file:///nas/control/{prefix}{i}.dcm",
                f"/nas/control/{prefix}{i}.dcm",
                uuid.uuid4().hex,
            )
        )
    return ids


async def _running(pool: asyncpg.Pool, task_id: str, *, scanned: bool = True) -> None:
    await pool.execute(
        """UPDATE import_tasks SET status = 'running', started_at = now(), scan_completed = $2,
                  lease_owner = 'scanner-1', lease_until = now() + interval '1 minute'
            WHERE id = $1""",
        uuid.UUID(task_id),
        scanned,
    )


async def _post(client, keys, task_id: str, action: str, role: str = "ops"):
    return await client.post(f"/v1/imports/{task_id}/{action}", headers=keys.headers(role))


async def _statuses(pool: asyncpg.Pool, ids: list[int]) -> list[tuple[str, bool]]:
    rows = await pool.fetch(
        "SELECT status, held_at IS NOT NULL AS held FROM ingest_files WHERE id = ANY($1)"
        " ORDER BY id",
        ids,
    )
    return [(r["status"], r["held"]) for r in rows]


async def test_pause_holds_queued_files_and_resume_sends_them_on(client, keys, pool, publisher):
    task_id = await _task(client, keys)
    await _running(pool, task_id, scanned=False)
    queued = await _files(pool, task_id, 3)
    publisher.events.clear()

    paused = await _post(client, keys, task_id, "pause")
    assert paused.status_code == 200, paused.text
    assert (paused.json()["status"], paused.json()["paused_at"] is not None) == ("paused", True)
    lease = await pool.fetchrow(
        "SELECT lease_owner, lease_until FROM import_tasks WHERE id = $1", uuid.UUID(task_id)
    )
    assert tuple(lease) == (None, None)  # the scanner's next renewal fails: it stops
    assert (await _post(client, keys, task_id, "pause")).json()["status"] == "paused"

    # The extractor's gate: the paused task's files are set aside, unread, still pending.
    async with pool.acquire() as conn:
        gated = await task_control.gate(conn, [(f, task_id) for f in queued[:2]])
        assert gated.held == frozenset(queued[:2]) and not gated.cancelled
        # Nothing of a paused task is re-emitted as stale by the reconciler.
        await conn.execute("UPDATE ingest_files SET updated_at = now() - interval '1 hour'")
        assert await ledger.stale_pending(conn, older_than_seconds=1, limit=10) == []
    assert await _statuses(pool, queued) == [
        ("pending", True),
        ("pending", True),
        ("pending", False),
    ]

    resumed = await _post(client, keys, task_id, "resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "running"
    sent = [e for e in publisher.events if isinstance(e, FileDiscovered)]
    assert sorted(e.file.file_id for e in sent) == queued[:2]
    assert {e.file.task_id for e in sent} == {task_id}
    assert await _statuses(pool, queued) == [("pending", False)] * 3
    async with pool.acquire() as conn:  # a running task's files pass the gate
        assert not (await task_control.gate(conn, [(queued[2], task_id)])).stopped(queued[2])
    # Resuming a task that is not paused changes nothing; an ended one is 409.
    assert (await _post(client, keys, task_id, "resume")).json()["status"] == "running"
    await pool.execute(
        "UPDATE import_tasks SET status = 'completed' WHERE id = $1", uuid.UUID(task_id)
    )
    refused = await _post(client, keys, task_id, "pause")
    assert refused.status_code == 409
    assert refused.json()["detail"] == "a completed import cannot be paused"


async def test_a_paused_task_whose_files_all_finished_completes_on_resume(client, keys, pool):
    task_id = await _task(client, keys)
    await _running(pool, task_id)
    [f] = await _files(pool, task_id, 1)
    await _post(client, keys, task_id, "pause")
    async with pool.acquire() as conn:
        await ledger.mark_outcome(conn, f, "indexed", stage="indexer")
    assert (await client.get(f"/v1/imports/{task_id}", headers=keys.headers("ops"))).json()[
        "status"
    ] == "paused"  # a paused task never completes by itself
    assert (await _post(client, keys, task_id, "resume")).json()["status"] == "completed"


async def test_cancel_ends_cancelled_once_what_was_emitted_has_an_outcome(client, keys, pool):
    task_id = await _task(client, keys)
    await _running(pool, task_id, scanned=False)
    held, in_flight, queued = await _files(pool, task_id, 3)
    await _post(client, keys, task_id, "pause")
    async with pool.acquire() as conn:
        await task_control.gate(conn, [(held, task_id)])

    cancelled = await _post(client, keys, task_id, "cancel")
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    # The held file ended at once; one is still being read, one still queued for the gate.
    assert (body["status"], body["scan_completed"]) == ("cancelling", True)
    assert (body["counters"]["cancelled"], body["counters"]["pending"]) == (1, 2)
    async with pool.acquire() as conn:
        gated = await task_control.gate(conn, [(queued, task_id)])
        assert gated.cancelled == {queued}
        with pytest.raises(task_control.NotAllowed):
            await task_control.pause(conn, task_id)
    # What was already past the gate reaches its own outcome; then the task is cancelled.
    async with pool.acquire() as conn:
        await ledger.mark_outcome(conn, in_flight, "indexed", stage="indexer")
    task = (await client.get(f"/v1/imports/{task_id}", headers=keys.headers("ops"))).json()
    assert task["status"] == "cancelled"
    assert task["completed_at"] is not None and task["cancelled_at"] is not None
    counters = task["counters"]
    assert (counters["files_scanned"], counters["new_instances"], counters["cancelled"]) == (
        3,
        1,
        2,
    )
    reasons = await pool.fetch(
        "SELECT stage, reason FROM ingest_files WHERE status = 'cancelled' AND task_id = $1",
        uuid.UUID(task_id),
    )
    assert {(r["stage"], r["reason"]) for r in reasons} == {
        ("extractor", task_control.CANCELLED_REASON)
    }
    assert (await _post(client, keys, task_id, "cancel")).status_code == 200  # idempotent
    assert (await _post(client, keys, task_id, "resume")).status_code == 409


async def test_a_cancelled_scan_may_not_fail_the_task_afterwards(client, keys, pool):
    from libs.db import tasks

    task_id = await _task(client, keys)
    await _post(client, keys, task_id, "cancel")
    async with pool.acquire() as conn:
        await tasks.fail_task(conn, task_id, "folder vanished")
        task = await tasks.get_task(conn, task_id)
    assert task is not None and (task.status, task.error) == ("cancelled", None)


@pytest.mark.parametrize("action", ["pause", "resume", "cancel"])
async def test_control_needs_the_imports_permission_and_is_audited(
    client, keys, action, audit_rows
):
    task_id = await _task(client, keys)
    refused = await _post(client, keys, task_id, action, role="clinician")
    assert refused.status_code == 403
    unknown = await _post(client, keys, str(uuid.uuid4()), action)
    assert unknown.status_code == 404
    ok = await _post(client, keys, task_id, action, role="admin")
    assert ok.status_code == 200
    [*_, row] = await audit_rows(f"import.{action}")
    assert (row["role"], row["path"], row["status_code"], row["result_count"]) == (
        "admin",
        f"/v1/imports/{task_id}/{action}",
        200,
        1,
    )


async def _index(pool: asyncpg.Pool, file_id: int, patient: str, study: str, modality: str) -> None:
    """One instance in the index as the indexer leaves it (its patient's first file: the
    first file seen of that patient)."""
    pk = await pool.fetchval(
        """INSERT INTO patients (patient_key, patient_id, patient_name, birth_date, sex,
                                 first_file_id)
           VALUES ($1, $1, $2, $3, 'F', $4)
           ON CONFLICT (patient_key) DO UPDATE SET updated_at = now() RETURNING id""",
        patient,
        f"{patient}^TEST",
        date(1970, 1, 2),
        file_id,
    )
    await pool.execute(
        """INSERT INTO studies (study_uid, patient_pk, storage_prefix) VALUES ($1, $2, $1)
           ON CONFLICT DO NOTHING""",
        study,
        pk,
    )
    series = f"{study}.{1 if modality == 'CT' else 2}"
    await pool.execute(
        """INSERT INTO series (series_uid, study_uid, modality) VALUES ($1, $2, $3)
           ON CONFLICT DO NOTHING""",
        series,
        study,
        modality,
    )
    sop = f"{study}.9.{file_id}"
    await pool.execute(
        """INSERT INTO instances (sop_instance_uid, series_uid, study_uid, size_bytes,
                                  file_sha256, content_sha256, storage_url, first_file_id)
           VALUES ($1, $2, $3, 100, 'x', 'y', 'file:///s', $4)""",
        sop,
        series,
        study,
        file_id,
    )
    async with pool.acquire() as conn:
        await ledger.mark_outcome(
            conn, file_id, "indexed", stage="indexer", sop_instance_uid=sop, study_uid=study
        )


async def test_stats_break_the_import_down(client, keys, pool):
    earlier = await _task(client, keys, "/nas/earlier")
    [old] = await _files(pool, earlier, 1, prefix="old")
    await _index(pool, old, "KNOWN1", "1.2.1", "CT")  # a patient already in the index

    task_id = await _task(client, keys)
    await _running(pool, task_id)
    files = await _files(pool, task_id, 6)
    await _index(pool, files[0], "KNOWN1", "1.2.2", "CT")
    await _index(pool, files[1], "NEW1", "1.2.3", "CT")
    await _index(pool, files[2], "NEW1", "1.2.3", "MR")
    async with pool.acquire() as conn:
        for f in files[3:5]:
            await ledger.mark_outcome(conn, f, "failed", stage="extractor", reason="not DICOM")

    task = (await client.get(f"/v1/imports/{task_id}", headers=keys.headers("ops"))).json()
    assert (task["counters"]["patients_found"], task["counters"]["patients_new"]) == (2, 1)
    r = await client.get(f"/v1/imports/{task_id}/stats", headers=keys.headers("ops"))
    assert r.status_code == 200, r.text
    stats = r.json()
    assert stats["patients_total"] == 2
    assert [
        (p["patient_id"], p["new_to_index"], p["studies"], p["new_instances"], p["size_bytes"])
        for p in stats["patients"]
    ] == [("NEW1", True, 1, 2, 200), ("KNOWN1", False, 1, 1, 100)]
    assert stats["patients"][0]["birth_date"] == "1970-01-02"
    assert [(m["modality"], m["new_instances"]) for m in stats["modalities"]] == [
        ("CT", 2),
        ("MR", 1),
    ]
    assert stats["failure_groups"] == [
        {"stage": "extractor", "reason": "not DICOM", "files": 2, "example": "/nas/control/f3.dcm"}
    ]
    rates = stats["rates"]
    assert (rates["files_done"], rates["bytes_done"]) == (5, 500)
    assert rates["files_per_second"] > 0 and rates["recent_files_per_second"] > 0
    assert rates["eta_seconds"] is not None  # one file left
    one = await client.get(
        f"/v1/imports/{task_id}/stats", params={"limit": 1}, headers=keys.headers("ops")
    )
    assert [p["patient_id"] for p in one.json()["patients"]] == ["NEW1"]
    assert one.json()["patients_total"] == 2
    forbidden = await client.get(f"/v1/imports/{task_id}/stats", headers=keys.headers("clinician"))
    assert forbidden.status_code == 403


def _events(text: str) -> list[dict[str, str]]:
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = fields.get(name, "") + value.removeprefix(" ")
        if fields:
            out.append(fields)
    return out


async def test_events_of_an_ended_task_give_its_last_snapshot_then_end(client, keys, pool):
    task_id = await _task(client, keys)
    await _running(pool, task_id)
    [f] = await _files(pool, task_id, 1)
    async with pool.acquire() as conn:
        await ledger.mark_outcome(conn, f, "indexed", stage="indexer")
    r = await client.get(f"/v1/imports/{task_id}/events", headers=keys.headers("ops"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-store"
    retry, progress, end = _events(r.text)
    assert retry == {"retry": "2000"}
    assert progress["event"] == "progress" and end["event"] == "end"
    snapshot = json.loads(progress["data"])
    assert (snapshot["status"], snapshot["counters"]["new_instances"]) == ("completed", 1)
    assert progress["id"] == end["id"]
    # Reconnecting with the last id: the snapshot is not sent again, only the end.
    again = await client.get(
        f"/v1/imports/{task_id}/events",
        headers={**keys.headers("ops"), "Last-Event-ID": progress["id"]},
    )
    assert [e.get("event") for e in _events(again.text)] == [None, "end"]
    unknown = await client.get(f"/v1/imports/{uuid.uuid4()}/events", headers=keys.headers("ops"))
    assert unknown.status_code == 404


async def test_openapi_documents_the_new_routes(client):
    paths = (await client.get("/openapi.json")).json()["paths"]
    for action in ("pause", "resume", "cancel"):
        assert "post" in paths[f"/v1/imports/{{task_id}}/{action}"]
    events = paths["/v1/imports/{task_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert "get" in paths["/v1/imports/{task_id}/stats"]


async def test_a_quiet_stream_sends_heartbeats_and_each_change_once(client, keys, pool):
    from services.api.import_events import progress_stream
    from services.api.routes.imports import _snapshot

    task_id = await _task(client, keys)
    await _running(pool, task_id, scanned=False)
    [f] = await _files(pool, task_id, 1)
    stream = progress_stream(
        pool,
        lambda conn: _snapshot(conn, task_id=task_id),
        last_event_id=None,
        interval=0.02,
        heartbeat=0.1,
    )
    assert await anext(stream) == "retry: 2000\n\n"
    first = _events(await anext(stream))[0]
    assert json.loads(first["data"])["counters"]["pending"] == 1
    assert await anext(stream) == ": heartbeat\n\n"  # nothing changed meanwhile
    async with pool.acquire() as conn:
        await pool.execute(
            "UPDATE import_tasks SET scan_completed = true WHERE id = $1", uuid.UUID(task_id)
        )
        await ledger.mark_outcome(conn, f, "indexed", stage="indexer")
    chunks = [chunk async for chunk in stream]
    events = [e for c in chunks for e in _events(c)]
    assert [e["event"] for e in events] == ["progress", "end"]
    last = json.loads(events[0]["data"])
    assert (last["status"], last["counters"]["new_instances"]) == ("completed", 1)
    assert events[0]["id"] != first["id"]
