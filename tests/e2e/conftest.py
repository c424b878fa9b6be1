from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
import pytest_asyncio

from libs.db.apikeys import create_key
from libs.tools.devstack import configured
from load_test.gcs import GcsEmulator
from load_test.process_stack import OPTIONAL, PIPELINE, PREFIX, Stack, stack_env

if TYPE_CHECKING:
    from clientkit import Clinic

    from tests.conftest import Broker

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


async def start_stack(
    root: Path,
    database_url: str,
    pool: asyncpg.Pool,
    bootstrap: str,
    overrides: dict[str, str],
    also: tuple[str, ...] = (),
) -> Stack:
    """The pipeline, the API, each configured optional source and the services in `also`,
    started; the caller waits for them and stops them (`stop_all()`), also when this fails."""
    env, ports = stack_env(root, database_url, bootstrap)
    env.update(overrides)
    for name, prefix in PREFIX.items():  # an ops port chosen by the test wins
        ports[name] = int(env.get(f"{prefix}OPS_PORT", ports[name]))
    s = Stack(root=root, env=env, ports=ports)
    async with pool.acquire() as conn:
        _, s.key = await create_key(conn, "admin", "e2e")
    names = [*PIPELINE, *(n for n in OPTIONAL if configured(n, env)), "api", *also]
    for name in names:
        s.start(name)
    return s


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
    overrides: dict[str, str] = {}
    if storage_backend == "gs":
        emulator: GcsEmulator = request.getfixturevalue("gcs_emulator")
        overrides.update(emulator.env, STORAGE_URL=emulator.url())
        for name, value in emulator.env.items():  # the test reads back through the client too
            monkeypatch.setenv(name, value)
    marker = request.node.get_closest_marker("stack_env")
    if marker:
        overrides.update(marker.kwargs)
    overrides.update(extra_env)
    also = request.node.get_closest_marker("stack_also")  # started, and waited for, together
    s = await start_stack(
        tmp_path,
        database_url,
        pool,
        broker.bootstrap,  # type: ignore[attr-defined]
        overrides,
        tuple(also.args) if also else (),
    )
    try:
        await s.wait_ready(list(s.procs))
        yield s
    finally:
        s.stop_all()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clinic(
    tmp_path_factory: pytest.TempPathFactory,
    module_database_url: str,
    module_pool: asyncpg.Pool,
    module_broker: Broker,
) -> AsyncIterator[Clinic]:
    """Two patients (one Cyrillic), one study each (2 series x 12 images), imported through
    the pipeline of a stack shared by the module's tests (they only read from it: search and
    download); the tar.zst and ZIP archives built once (HEAD waits for it), so their
    responses carry a Content-Length (a TAR is built on its first request: streamed without
    one). Archives are downloaded from the API's own origin,
    which relays `/v1/studies/{uid}/archive` to the packager (started here)."""
    import httpx
    from clientkit import Clinic, originals_by_study
    from trees import build_tree

    root = tmp_path_factory.mktemp("clinic")
    s = await start_stack(root, module_database_url, module_pool, module_broker.bootstrap, {})
    try:
        s.start("packager")
        await s.wait_ready(list(s.procs))
        tree = s.root / "imports" / "clinic"
        build_tree(tree, patients=2, series_per_study=2, per_series=12, extras=False)
        assert (await s.wait_task(await s.start_import(tree)))["status"] == "completed"
        originals, patients = originals_by_study(tree)
        async with module_pool.acquire() as conn:
            _, key = await create_key(conn, "clinician", "clients")
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(headers=headers, timeout=60) as c:
            for uid in originals:
                for fmt in ("tar.zst", "zip"):
                    r = await c.head(f"{s.api}/v1/studies/{uid}/archive?format={fmt}")
                    assert r.status_code == 200, (uid, fmt, r.status_code)
        yield Clinic(s.api, s.api, key, originals, patients)
    finally:
        s.stop_all()
