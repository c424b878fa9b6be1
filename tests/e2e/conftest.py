from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from libs.db.apikeys import create_key
from load_test.gcs import GcsEmulator
from load_test.stack import PIPELINE, Stack, stack_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def storage_backend() -> str:
    """`file` unless a test runs on both: `@pytest.mark.parametrize("storage_backend",
    ["file", "gs"])` (gs = a GCS emulator process behind the real client)."""
    return "file"


@pytest.fixture
async def stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    database_url: str,
    pool: asyncpg.Pool,
    broker: object,
    storage_backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Stack]:
    """Overrides per test: `@pytest.mark.stack_env(NAS_WATCH="true")`."""
    env, ports = stack_env(tmp_path, database_url, broker.bootstrap)  # type: ignore[attr-defined]
    if storage_backend == "gs":
        emulator: GcsEmulator = request.getfixturevalue("gcs_emulator")
        env.update(emulator.env, STORAGE_URL=emulator.url())
        for name, value in emulator.env.items():  # the test reads back through the client too
            monkeypatch.setenv(name, value)
    marker = request.node.get_closest_marker("stack_env")
    if marker:
        env.update(marker.kwargs)
    s = Stack(root=tmp_path, env=env, ports=ports)
    async with pool.acquire() as conn:
        _, s.key = await create_key(conn, "admin", "e2e")
    for name in [*PIPELINE, "api"]:
        s.start(name)
    try:
        await s.wait_ready([*PIPELINE, "api"])
        yield s
    finally:
        s.stop_all()
