"""The PACS watcher with a real Orthanc upstream: new studies are retrieved (C-MOVE to our
receiver, or C-GET), a study that gets more instances upstream is completed, and a study
asked for through POST /v1/retrieve is retrieved on demand (or the task fails when the PACS
stays away)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pydicom
import pytest

from libs.db.apikeys import create_key
from libs.dicom.synthetic import generate_corpus
from libs.tools.dev_broker import free_port
from load_test.peers import Orthanc
from load_test.process_stack import Stack

pytestmark = pytest.mark.e2e


async def study_count(pool: asyncpg.Pool, expected: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        n = await pool.fetchval("SELECT max(instance_count) FROM studies")
        if n == expected:
            return
        assert time.monotonic() < deadline, f"study has {n} instances, expected {expected}"
        await asyncio.sleep(0.25)


@pytest.mark.parametrize("how", ["move", "get"])
async def test_new_and_grown_studies_are_retrieved(
    stack: Stack, pool: asyncpg.Pool, how: str
) -> None:
    generate_corpus(stack.root / "upstream-files", 15, rows=32, columns=32)
    files = sorted((stack.root / "upstream-files").rglob("*.dcm"))
    for path in files:  # a study of today: inside the watcher's moving window
        ds = pydicom.dcmread(path)
        ds.StudyDate = date.today().strftime("%Y%m%d")
        ds.save_as(path, enforce_file_format=True)
    orthanc = upstream_orthanc(stack)
    orthanc.start()
    try:
        for path in files[:10]:
            orthanc.upload(path)
        pacs = {"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1"}
        _watcher_env(
            stack, {**pacs, "port": orthanc.dicom_port, "retrieve": how}, WATCHER_NIGHT_WINDOW=""
        )
        await start_receiver_and_watcher(stack)
        await study_count(pool, 10)

        for path in files[10:]:
            orthanc.upload(path)
        await study_count(pool, 15)
        assert await pool.fetchval("SELECT count(*) FROM instances") == 15
        assert await pool.fetchval("SELECT count(*) FROM pacs_watermarks") == 1
        sources = {r["source"] for r in await pool.fetch("SELECT source FROM ingest_files")}
        assert sources == ({"dicom:ORTHANC"} if how == "move" else {"pacs:orthanc"})
    finally:
        orthanc.stop()


def upstream_orthanc(stack: Stack) -> Orthanc:
    """An Orthanc upstream (not started) that knows the watcher and our receiver as C-MOVE
    destination; the receiver's settings go into the stack's environment."""
    receiver_port = free_port()
    stack.env.update(
        RECEIVER_PORT=str(receiver_port),
        RECEIVER_STAGING_DIR=str(stack.root / "staging"),
        RECEIVER_MIN_FREE_MB="0",
    )
    return Orthanc(
        stack.root / "orthanc",
        modalities={
            "watcher": ("DFWATCHER", "127.0.0.1", free_port()),
            "dicomflow": ("DICOMFLOW", "127.0.0.1", receiver_port),
        },
    )


async def start_receiver_and_watcher(stack: Stack) -> None:
    stack.start("dicom-receiver")
    stack.start("pacs-watcher")
    await stack.wait_ready(["dicom-receiver", "pacs-watcher"])


def _outside_now() -> str:
    """A night window that does not include the present (the poller waits all test long)."""
    now = datetime.now()
    start, end = now + timedelta(hours=2), now + timedelta(hours=3)
    return f"{start:%H:%M}-{end:%H:%M}"


def _watcher_env(stack: Stack, pacs: dict[str, object], **extra: str) -> None:
    stack.env.update(
        {
            "WATCHER_PACS": json.dumps([pacs]),
            "WATCHER_CALLING_AE": "DFWATCHER",
            "WATCHER_POLL_INTERVAL_SECONDS": "1",
            "WATCHER_LOOKBACK_DAYS": "2",
            "WATCHER_STAGING_DIR": str(stack.root / "pacs-get"),
            "WATCHER_NIGHT_WINDOW": _outside_now(),
            "WATCHER_RETRIEVE_POLL_SECONDS": "0.5",
            **extra,
        }
    )


async def _ops_client(stack: Stack, pool: asyncpg.Pool) -> httpx.AsyncClient:
    async with pool.acquire() as conn:
        _, key = await create_key(conn, "ops", "e2e retrieve")
    return httpx.AsyncClient(
        base_url=stack.api, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


async def _wait_retrieve(
    client: httpx.AsyncClient, task_id: str, done: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = (await client.get(f"/v1/retrieve/{task_id}")).json()
        if done(body):
            return body
        assert time.monotonic() < deadline, f"retrieve not there after {timeout}s: {body}"
        await asyncio.sleep(0.25)


@pytest.mark.parametrize("how", ["move", "get"])
async def test_on_demand_retrieve_of_one_study(stack: Stack, pool: asyncpg.Pool, how: str) -> None:
    """POST /v1/retrieve for one of two upstream studies (by UID, or by a patient id query):
    the task completes, that study's instances are indexed, the other study is not touched;
    outside the night window (the poller waits for it, a person's request does not)."""
    wanted, other = stack.root / "upstream-a", stack.root / "upstream-b"
    generate_corpus(wanted, 6, rows=32, columns=32, seed=1)
    generate_corpus(other, 4, rows=32, columns=32, seed=2)
    files = sorted([*wanted.rglob("*.dcm"), *other.rglob("*.dcm")])
    for path in files:  # today: inside the poller's window, so only the night window holds it
        ds = pydicom.dcmread(path)
        ds.StudyDate = date.today().strftime("%Y%m%d")
        ds.save_as(path, enforce_file_format=True)
    first = pydicom.dcmread(next(wanted.rglob("*.dcm")))
    study_uid, patient_id = str(first.StudyInstanceUID), str(first.PatientID)
    # C-MOVE asked for by study UID, C-GET by a query (the C-FIND finds the study)
    ask = {"study_uid": study_uid} if how == "move" else {"query": {"patient_id": patient_id}}
    orthanc = upstream_orthanc(stack)
    orthanc.start()
    try:
        for path in files:
            orthanc.upload(path)
        pacs = {"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1"}
        _watcher_env(stack, {**pacs, "port": orthanc.dicom_port, "retrieve": how})
        await start_receiver_and_watcher(stack)
        async with await _ops_client(stack, pool) as client:
            response = await client.post("/v1/retrieve", json={"pacs": "orthanc", **ask})
            assert response.status_code == 202, response.text
            task_id = response.json()["task_id"]
            body = await _wait_retrieve(
                client,
                task_id,
                lambda b: (
                    b["status"] in ("completed", "failed")
                    and b["retrieve"]["progress"]["instances_indexed"] == 6
                ),
                timeout=90,
            )
        assert body["status"] == "completed", body
        progress = body["retrieve"]["progress"]
        assert progress == {
            "studies_matched": 1,
            "studies_skipped": 0,
            "studies_retrieved": 1,
            "instances_expected": 6,
            "instances_completed": 6,
            "instances_failed": 0,
            "instances_warning": 0,
            "instances_remaining": 0,
            "instances_indexed": 6,
        }
        assert body["retrieve"]["method"] == how
        if how == "get":  # C-GET files are the task's ledger rows
            assert body["counters"]["files_scanned"] == 6
            assert body["counters"]["new_instances"] == 6
        rows = await pool.fetch("SELECT study_uid, instance_count FROM studies")
        assert [(r["study_uid"], r["instance_count"]) for r in rows] == [(study_uid, 6)]
    finally:
        orthanc.stop()


async def test_retrieve_from_an_unreachable_pacs_fails_after_bounded_retries(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    pacs = {"name": "away", "ae_title": "AWAY", "host": "127.0.0.1", "port": free_port()}
    _watcher_env(
        stack,
        pacs,
        WATCHER_RETRIEVE_MAX_ATTEMPTS="2",
        WATCHER_RETRIEVE_BACKOFF_SECONDS="0.5",
        WATCHER_POLL_INTERVAL_SECONDS="600",
    )
    stack.start("pacs-watcher")
    await stack.wait_ready(["pacs-watcher"])
    async with await _ops_client(stack, pool) as client:
        unknown = await client.post("/v1/retrieve", json={"pacs": "elsewhere", "study_uid": "1.2"})
        assert unknown.status_code == 422
        response = await client.post(
            "/v1/retrieve", json={"pacs": "away", "query": {"patient_id": "P1"}}
        )
        assert response.status_code == 202, response.text
        body = await _wait_retrieve(
            client, response.json()["task_id"], lambda b: b["status"] == "failed", timeout=60
        )
    assert body["error"].startswith("PACS away unreachable after 2 attempts: cannot reach AWAY")
    assert body["retrieve"]["attempts"] == 2
    assert body["retrieve"]["last_error"] == body["error"]
