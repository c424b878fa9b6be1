"""The audit trail: append-only for the services' own database role, every key creation in
it (CLI and `dicomflow up` included), and the admin key file created 0600 in one step."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from libs.db.audit import AuditEntry, write_audit
from libs.tools.devstack import admin_key


async def test_audit_log_is_append_only(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await write_audit(conn, AuditEntry("study.read", "GET", "/v1/studies/1", 200))
        for statement in (
            "UPDATE audit_log SET status_code = 200",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            with pytest.raises(asyncpg.PostgresError, match="append-only"):
                await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == 1


async def test_cli_key_creation_is_audited(database_url: str, pool: asyncpg.Pool) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": os.getcwd()}
    argv = [sys.executable, "-m", "libs.tools.cli", "apikey", "create", "--role", "ops"]
    done = await asyncio.to_thread(
        subprocess.run,
        [*argv, "--name", "robot"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    plaintext = done.stdout.strip()
    assert plaintext.startswith("dfk_")
    async with pool.acquire() as conn:
        [row] = await conn.fetch("SELECT * FROM audit_log WHERE action = 'apikey.create'")
    assert row["method"] == "CLI" and row["client"].startswith("cli:")
    assert row["query"]["role"] == "ops" and row["query"]["name"] == "robot"
    assert plaintext not in str(dict(row))  # the key itself is never in the trail


async def test_admin_key_file_is_0600_from_its_creation_and_shown_once(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    old = os.umask(0)  # a permissive umask must not matter
    try:
        key, created = await admin_key(database_url, tmp_path)
    finally:
        os.umask(old)
    path = tmp_path / "admin-key"
    assert created and path.read_text().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["admin-key"]  # no temporary left
    again, created = await admin_key(database_url, tmp_path)
    assert again == key and not created  # the next start does not show it again
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM audit_log WHERE action = 'apikey.create'")
    assert row is not None and row["method"] == "CLI" and row["query"]["role"] == "admin"
