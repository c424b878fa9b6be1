"""The backend connector in the stack, against a real HTTP backend (tests/e2e/his_backend.py)
that enforces uniqueness and fails one request in three at random, half of those after
applying it. Two patients' studies, then a second study of one of them while the connector
is killed and restarted: each patient is created once, each image uploaded once, as JPEG.

The backend's uniqueness would hide a duplicate (a second create is answered 409 and stored
nowhere), so it counts the requests per key: every re-send must be explained by an answer
lost after the request was applied, or by the kill (the request in flight then)."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from libs.dicom.synthetic import make_dataset, write_instance
from libs.tools.dev_broker import free_port, wait_for_port
from load_test.process_stack import Stack
from tests.polling import eventually

CONNECTOR = "backend-connector"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "his-backend.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.e2e.his_backend:app", "--port", str(port)],
        env={"HIS_FAIL_RATE": "0.33", "HIS_SEED": "7", "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.1", port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def extra_env(backend: str) -> dict[str, str]:
    return {
        "CONNECTOR_URL": backend,
        "CONNECTOR_UPLOAD": "jpeg",
        "CONNECTOR_MAX_ATTEMPTS": "8",
        "CONNECTOR_BACKOFF_SECONDS": "0.05",
        "CONNECTOR_MAX_BACKOFF_SECONDS": "0.2",
    }


def state(backend: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{backend}/state", timeout=10).json()
    return body


def write_study(folder: Path, patient_id: str, name: str, count: int) -> None:
    study, series = f"2.25.{uuid.uuid4().int}", f"2.25.{uuid.uuid4().int}"
    for i in range(count):
        ds = make_dataset(
            patient_id=patient_id,
            patient_name=name,
            birth_date="19700101",
            sex="M",
            study_uid=study,
            series_uid=series,
            sop_uid=f"2.25.{uuid.uuid4().int}",
            modality="CT",
            rows=32,
            columns=32,
            study_date="20240301",
            accession="ACCX",
            study_description="Follow-up",
            series_number=1,
            instance_number=i + 1,
            charset="ISO_IR 192",
            pixel_seed=i,
        )
        write_instance(folder / f"IMG{i:04d}.dcm", ds)


async def test_patients_created_once_and_images_uploaded_once_through_failures_and_a_kill(
    stack: Stack, pool: asyncpg.Pool, backend: str
) -> None:
    from trees import build_tree

    log = partial(stack.tail, CONNECTOR, 30)
    first = stack.root / "imports" / "first"
    build_tree(first, patients=2, series_per_study=2, per_series=3, extras=False)
    assert (await stack.wait_task(await stack.start_import(first)))["status"] == "completed"
    await eventually(lambda: len(state(backend)["images"]) == 12, 120, what=log)
    assert len(state(backend)["patients"]) == 2

    # A second study of the first patient; the connector killed once it has begun.
    patient = await pool.fetchrow("SELECT patient_id, patient_name FROM patients LIMIT 1")
    assert patient is not None
    second = stack.root / "imports" / "second"
    second.mkdir(parents=True)
    write_study(second, patient["patient_id"], patient["patient_name"], 12)
    assert (await stack.wait_task(await stack.start_import(second)))["status"] == "completed"
    await eventually(lambda: len(state(backend)["images"]) > 12, 120, what=log)
    stack.kill(CONNECTOR, signal.SIGKILL)
    kills = 1
    stack.start(CONNECTOR)
    await stack.wait_ready([CONNECTOR])
    await eventually(lambda: len(state(backend)["images"]) == 24, 120, what=log)

    held = state(backend)
    pids = sorted(p["patient_id"] for p in held["patients"])
    ours = await pool.fetch("SELECT patient_id FROM patients ORDER BY 1")
    assert pids == [r["patient_id"] for r in ours]  # each created once (unique ids, 2 rows)
    indexed = {
        r["sop_instance_uid"] for r in await pool.fetch("SELECT sop_instance_uid FROM instances")
    }
    assert set(held["images"]) == indexed  # each image once (the backend keys them)
    assert all(i["jpeg"] and i["type"] == "image/jpeg" for i in held["images"].values())
    # The second study's images went to the patient found, not to a new one.
    by_id = {p["id"]: p["patient_id"] for p in held["patients"]}
    owners = {by_id[i["patient"]] for i in held["images"].values()}
    assert owners == set(pids)
    # The random failures happened, including answers lost after the effect: the retries that
    # followed them were answered 409 and taken as done, never a second patient or image.
    counts = held["counts"]
    assert counts["failed_before"] > 0 and counts["failed_after"] > 0, counts
    recorded = await pool.fetchval(
        "SELECT count(*) FROM connector_images WHERE outcome = 'uploaded'"
    )
    assert recorded == 24

    # Requests per key: one applied, every other one a 409. A key is sent again only after its
    # answer was lost (each loss: one re-send, the retry that follows it) or because the kill
    # came between the backend's success and the connector's record of it, which can be true
    # of the requests in flight only (CONNECTOR_CONCURRENCY studies at once, one request each).
    attempts, conflicts, lost = held["attempts"], held["conflicts"], held["lost"]
    keys = {f"patient:{p}" for p in pids} | {f"image:{sop}" for sop in indexed}
    assert set(attempts) == keys, "a request for something the index does not hold"
    for key in keys:
        assert attempts[key] == 1 + conflicts.get(key, 0), (key, attempts[key])
        assert conflicts.get(key, 0) <= lost.get(key, 0) + 1, (key, conflicts[key], lost)
    in_flight = int(stack.env.get("CONNECTOR_CONCURRENCY", "1"))
    unexplained = {k: n - lost.get(k, 0) for k, n in conflicts.items() if n > lost.get(k, 0)}
    assert sum(unexplained.values()) <= kills * in_flight, (unexplained, lost)
    assert sum(conflicts.values()) <= counts["failed_after"] + kills * in_flight, counts
