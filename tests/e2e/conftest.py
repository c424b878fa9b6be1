from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest

from libs.db.apikeys import create_key
from libs.tools.devstack import configured
from load_test.gcs import GcsEmulator
from load_test.process_stack import OPTIONAL, PIPELINE, PREFIX, Stack, stack_env

if TYPE_CHECKING:
    from clientkit import Clinic

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
    """Overrides per test: `@pytest.mark.stack_env(NAS_WATCH="true")`, then `extra_env`;
    `@pytest.mark.stack_also("packager")` starts more services with the pipeline.
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
    also = request.node.get_closest_marker("stack_also")  # started, and waited for, together
    names += list(also.args) if also else []
    for name in names:
        s.start(name)
    try:
        await s.wait_ready(names)
        yield s
    finally:
        s.stop_all()


@pytest.fixture
async def archive_base(stack: Stack) -> str:
    """Where the clients (desktop, `dicomflow fetch`) download archives from: the API's own
    origin, which relays `/v1/studies/{uid}/archive` to the packager (started here)."""
    stack.start("packager")
    await stack.wait_ready(["packager"])
    return stack.api


@pytest.fixture
async def clinic(stack: Stack, archive_base: str, pool: asyncpg.Pool) -> Clinic:
    """Two patients (one Cyrillic), one study each (2 series x 12 images), imported through
    the pipeline; each archive format the server offers built once (HEAD waits for it), so
    responses carry a Content-Length."""
    import httpx
    from clientkit import Clinic, originals_by_study
    from trees import build_tree

    tree = stack.root / "imports" / "clinic"
    build_tree(tree, patients=2, series_per_study=2, per_series=12, extras=False)
    assert (await stack.wait_task(await stack.start_import(tree)))["status"] == "completed"
    originals, patients = originals_by_study(tree)
    async with pool.acquire() as conn:
        _, key = await create_key(conn, "clinician", "clients")
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        for uid in originals:
            for fmt in ("tar.zst", "zip"):
                r = await c.head(f"{archive_base}/v1/studies/{uid}/archive?format={fmt}")
                assert r.status_code == 200, (uid, fmt, r.status_code)
    return Clinic(stack.api, archive_base, key, originals, patients)
