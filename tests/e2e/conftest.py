from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from libs.db.apikeys import create_key
from libs.stack import configured
from load_test.stack import OPTIONAL, PIPELINE, PREFIX, Stack, stack_env

pytestmark = pytest.mark.e2e


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
    extra_env: dict[str, str],
) -> AsyncIterator[Stack]:
    """Overrides per test: `@pytest.mark.stack_env(NAS_WATCH="true")`, then `extra_env`.
    An optional source (orthanc-watcher, iso-watcher) starts when it is configured."""
    env, ports = stack_env(tmp_path, database_url, broker.bootstrap)  # type: ignore[attr-defined]
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
