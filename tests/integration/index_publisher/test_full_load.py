"""`dicomflow publish --all`: every study in the index reaches a new central index, once."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg

from tests.integration.index_publisher.conftest import (
    CENTER,
    Central,
    Rule,
    index_study,
    publisher_env,
)


async def publish_all(env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "libs.tools.cli",
        "publish",
        "--all",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_full_load_sends_every_study_once(
    database_url: str, conn: asyncpg.Connection, central: Central, tls: dict[str, Path]
) -> None:
    studies = {f"1.2.826.0.4.{n}": f"PID{n}" for n in range(7)}
    for n, (uid, pid) in enumerate(studies.items()):
        await index_study(conn, uid, pid, 1 + n % 3)  # revisions 1..3
    # One study was already delivered to the old central index at its current revision.
    old = "1.2.826.0.4.2"
    await conn.execute(
        "INSERT INTO index_publications (study_uid, delivered_revision) VALUES ($1, 3)", old
    )
    refused = "1.2.826.0.4.5"
    central.rules[refused] = Rule(400, {"detail": "study_datetime in the future"})
    central.down = Rule(503, {"detail": "starting"}, times=2)
    env = publisher_env(database_url, "127.0.0.1:1", central, tls)  # no broker needed

    code, out = await publish_all(env)
    assert code == 1, out
    assert f"rejected {refused}: central index rejected the study: HTTP 400" in out
    assert "study_datetime in the future" in out
    current = {uid: 1 + n % 3 for n, uid in enumerate(studies)}
    for uid, revision in current.items():
        assert central.revisions(uid) == ([] if uid == refused else [revision]), uid
    assert central.studies[old]["center"] == CENTER

    central.rules.clear()
    code, out = await publish_all(env)  # a re-run: only the refused study is new
    assert code == 0, out
    assert "done: 7 studies published" in out
    for uid, revision in current.items():
        assert central.revisions(uid) == [revision], uid
    rows = await conn.fetch("SELECT study_uid, delivered_revision FROM index_publications")
    assert {r["study_uid"]: r["delivered_revision"] for r in rows} == current
