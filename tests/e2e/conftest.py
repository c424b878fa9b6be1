from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from libs.db.apikeys import create_key
from libs.stack import configured
from load_test.gcs import GcsEmulator
from load_test.stack import OPTIONAL, PIPELINE, PREFIX, Stack, stack_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def storage_backend() -> str:
    """`file` unless a test runs on both: `@pytest.mark.parametrize("storage_backend",
    ["file", "gs"])` (gs = a GCS emulator process behind the real client)."""
    return "file"


@pytest.fixture
def extra_env() -> dict[str, str]:
    """Environment known only at run time (a peer's port): a test module overrides this."""
    return {}


@pytest.fixture
async def stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    database_url: str,
    pool: asyncpg.Pool,
    broker: object,
    storage_backend: str,
    monkeypatch: pytest.MonkeyPatch,
    extra_env: dict[str, str],
) -> AsyncIterator[Stack]:
    """Overrides per test: `@pytest.mark.stack_env(NAS_WATCH="true")`, then `extra_env`.
    An optional source (orthanc-watcher, iso-watcher) starts when it is configured."""
    env, ports = stack_env(tmp_path, database_url, broker.bootstrap)  # type: ignore[attr-defined]
    if storage_backend == "gs":
        emulator: GcsEmulator = request.getfixturevalue("gcs_emulator")
        env.update(emulator.env, STORAGE_URL=emulator.url())
        for name, value in emulator.env.items():  # the test reads back through the client too
            monkeypatch.setenv(name, value)
    marker = request.node.get_closest_marker("stack_env")
    if marker:
        env.update(marker.kwargs)
    env.update(extra_env)
    for name, prefix in PREFIX.items():  # an ops port chosen by the test wins
        ports[name] = int(env.get(f"{prefix}OPS_PORT", ports[name]))
    s = Stack(root=tmp_path, env=env, ports=ports)
    async with pool.acquire() as conn:
        _, s.key = await create_key(conn, "admin", "e2e")
    names = [*PIPELINE, *(n for n in OPTIONAL if configured(n, env)), "api"]
    for name in names:
        s.start(name)
    try:
        await s.wait_ready(names)
        yield s
    finally:
        s.stop_all()
