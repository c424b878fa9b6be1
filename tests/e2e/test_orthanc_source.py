"""The Orthanc source against a real Orthanc (Debian's package): the /changes feed across a
restart of the watcher, and the OnStableStudy Lua webhook shipped in deploy/orthanc/."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from studies import write_study

from libs.tools.dev_broker import free_port
from load_test.peers import Orthanc
from load_test.process_stack import Stack

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "deploy" / "orthanc" / "dicomflow.lua"
SECRET = uuid.uuid4().hex
WATCHER_PORT = free_port()


@pytest.fixture
def orthanc(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Orthanc]:
    """Parametrised (indirect) with True, Orthanc announces stable studies to the webhook."""
    root = tmp_path / "orthanc"
    root.mkdir()
    scripts: list[Path] = []
    if getattr(request, "param", False):
        settings = root / "dicomflow-settings.lua"
        settings.write_text(
            f'DICOMFLOW_URL = "http://127.0.0.1:{WATCHER_PORT}"\nDICOMFLOW_SECRET = "{SECRET}"\n'
        )
        scripts = [settings, LUA]
    peer = Orthanc(root=root, lua=scripts)
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture
def extra_env(orthanc: Orthanc) -> dict[str, str]:
    return {
        "ORTHANC_URL": orthanc.url,
        "ORTHANC_USERNAME": orthanc.username,
        "ORTHANC_PASSWORD": orthanc.password,
        "ORTHANC_WEBHOOK_SECRET": SECRET,
        "ORTHANC_OPS_PORT": str(WATCHER_PORT),
    }


async def wait_indexed(pool: asyncpg.Pool, sops: set[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = await pool.fetch(
            "SELECT sop_instance_uid FROM instances WHERE sop_instance_uid = ANY($1)", list(sops)
        )
        if len(rows) == len(sops):
            return
        assert time.monotonic() < deadline, f"{len(rows)}/{len(sops)} indexed"
        await asyncio.sleep(0.25)


async def orthanc_rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT sop_instance_uid, status FROM ingest_files WHERE source = 'orthanc'"
    )


async def test_changes_feed_survives_a_restart(
    stack: Stack, orthanc: Orthanc, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    first = write_study(tmp_path / "a", patient="Feed^First", series=2, per_series=3)
    for path in first.values():
        orthanc.upload(path)
    await wait_indexed(pool, set(first))

    assert stack.kill("orthanc-watcher", signal.SIGTERM) == 0
    second = write_study(tmp_path / "b", patient="Feed^Second", per_series=4)
    for path in second.values():
        orthanc.upload(path)
    stack.start("orthanc-watcher")
    await stack.wait_ready(["orthanc-watcher"])
    await wait_indexed(pool, set(first) | set(second))

    # Stable-study changes (StableAge 2 s) come after the instances: let them pass, then
    # every instance was taken in exactly once and ended indexed.
    deadline = time.monotonic() + 30
    while await pool.fetchval("SELECT count(*) FROM orthanc_cursor") == 0 or (
        await pool.fetchval("SELECT last_seq FROM orthanc_cursor")
        < httpx.get(f"{orthanc.url}/changes?last", auth=orthanc.auth).json()["Last"]
    ):
        assert time.monotonic() < deadline, "cursor never reached Orthanc's last change"
        await asyncio.sleep(0.25)
    rows = await orthanc_rows(pool)
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted([*first, *second])
    assert {r["status"] for r in rows} == {"indexed"}
    # Staged downloads are removed once stored; Orthanc keeps its copies (delete is off).
    deadline = time.monotonic() + 30
    while list((stack.root / "staging" / "orthanc").rglob("*.dcm")):
        assert time.monotonic() < deadline, "staged copies never cleaned up"
        await asyncio.sleep(0.25)
    assert len(httpx.get(f"{orthanc.url}/instances", auth=orthanc.auth).json()) == 10


@pytest.mark.parametrize("orthanc", [True], indirect=True, ids=["lua"])
@pytest.mark.stack_env(ORTHANC_FOLLOW_CHANGES="false", ORTHANC_DELETE_AFTER_INDEXED="true")
async def test_lua_webhook_ingests_stable_studies(
    stack: Stack, orthanc: Orthanc, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    webhook = f"http://127.0.0.1:{WATCHER_PORT}/v1/ingest/orthanc"
    async with httpx.AsyncClient() as c:
        body = {"ID": "0" * 8 + "-00000000" * 4, "Path": "Study"}
        assert (await c.post(webhook, json=body)).status_code == 401
        wrong = {"X-Dicomflow-Secret": "nope"}
        assert (await c.post(webhook, json=body, headers=wrong)).status_code == 401
        bad = {"ID": "../../system", "Path": "Study"}
        key = {"Authorization": f"Bearer {stack.key}"}
        assert (await c.post(webhook, json=bad, headers=key)).status_code == 422

    study = write_study(tmp_path / "lua", patient="Lua^Webhook", per_series=3)
    orthanc_study = {orthanc.upload(path)["ParentStudy"] for path in study.values()}
    assert len(orthanc_study) == 1
    await wait_indexed(pool, set(study))  # Orthanc's OnStableStudy called the webhook
    assert len(await orthanc_rows(pool)) == 3
    audited = await pool.fetch("SELECT status_code FROM audit_log WHERE action = 'orthanc.ingest'")
    assert 202 in {r["status_code"] for r in audited}

    # A repeated announcement (here with an API key) re-ingests nothing.
    async with httpx.AsyncClient() as c:
        body = {"ID": orthanc_study.pop(), "Path": "Study"}
        r = await c.post(webhook, json=body, headers=key)
    assert r.status_code == 202, r.text

    # Delete-after-indexed: Orthanc is emptied once the instances are stored and indexed.
    deadline = time.monotonic() + 30
    while httpx.get(f"{orthanc.url}/instances", auth=orthanc.auth).json():
        assert time.monotonic() < deadline, "instances never deleted from Orthanc"
        await asyncio.sleep(0.25)
    assert len(await orthanc_rows(pool)) == 3
