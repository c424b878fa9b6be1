"""Shared fixtures: a fresh PostgreSQL database and a fresh Kafka-protocol broker per test.

The real dependencies are required: when PostgreSQL or the broker binary is missing the
tests fail with the reason (they never skip), in CI and locally alike.

A migrated database is a copy of a template migrated once per test session
(`CREATE DATABASE ... TEMPLATE`): running the migrations into each of ~300 databases cost
about a second each; the copy costs about half. `migrate()` still runs on each copy and must
find nothing left to apply.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.kafka.admin import ensure_topics
from libs.kafka.producer import Producer
from libs.runtime.metrics import ProducerMetrics
from libs.tools.dev_broker import broker_argv, free_port, share_ports, wait_for_port
from load_test.gcs import GcsEmulator

PG_SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs `-n`), each worker picks free ports from its own
    slice of the range: a port one worker handed out but whose server has not bound it yet
    cannot be handed out by another."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    if worker:
        share_ports(int(worker.removeprefix("gw")), int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    name = f"dicomflow_test_{uuid.uuid4().hex[:12]}"
    yield f"{PG_SERVER}/{name}"
    await _drop_database(name)


async def _create_template(name: str) -> None:
    conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    pool = await create_pool(f"{PG_SERVER}/{name}", size=1)
    try:
        await migrate(pool)
    finally:
        await pool.close()  # no session may stay on a template while it is copied


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def migrated_template() -> Iterator[str]:
    """A database with every migration applied, made once per session (per xdist worker),
    the source of each test's `pool` database."""
    name = f"dicomflow_template_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create_template(name))
    yield name
    asyncio.run(_drop_database(name))


async def _migrated_pool(database_url: str, template: str) -> asyncpg.Pool:
    """A pool on a migrated database: a copy of the template, or the database a wider-scoped
    `database_url` (one per module in tests/integration/api) already holds."""
    name = database_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        copied = True
    except asyncpg.DuplicateDatabaseError:
        copied = False
    finally:
        await conn.close()
    pool = await create_pool(database_url, size=4)
    applied = await migrate(pool)
    assert not (copied and applied), f"the template lacks {applied}"
    return pool


@pytest.fixture
async def pool(database_url: str, migrated_template: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await _migrated_pool(database_url, migrated_template)
    yield pool
    await pool.close()


# One database and broker for a whole module, for tests that only read what a module-scoped
# stack holds (tests/e2e `clinic`): async fixtures on the module's event loop.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_database_url() -> AsyncIterator[str]:
    name = f"dicomflow_test_{uuid.uuid4().hex[:12]}"
    yield f"{PG_SERVER}/{name}"
    await _drop_database(name)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_pool(
    module_database_url: str, migrated_template: str
) -> AsyncIterator[asyncpg.Pool]:
    pool = await _migrated_pool(module_database_url, migrated_template)
    yield pool
    await pool.close()


@dataclass
class Broker:
    """A Tansu broker on its own port; `restart()` loses everything, like the real one."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            broker_argv(self.port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker(free_port())
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def module_broker() -> Iterator[Broker]:
    b = Broker(free_port())
    b.start()
    yield b
    b.stop()


@pytest.fixture
async def producer(broker: Broker) -> AsyncIterator[Producer]:
    """A started producer on `broker`, every topic created with 1 partition (with 2, Tansu
    once in a while did not show a dead letter to a reader after an earlier e2e test)."""
    await ensure_topics(broker.bootstrap, partitions=1, replication_factor=1)
    p = Producer(
        broker.bootstrap,
        idempotence=False,  # Tansu refuses InitProducerId
        metrics=ProducerMetrics.create("test", CollectorRegistry()),
        client_id="test",
    )
    await p.start()
    yield p
    await p.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Safety net: a worker process left behind by a failed test must not keep the test
    run from exiting (a process pool's manager thread joins its workers at exit)."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
        child.join(5)


@pytest.fixture
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    """A GCS JSON-API emulator process; tests point the real client at it via `env`."""
    emulator = GcsEmulator(log=tmp_path_factory.mktemp("gcs") / "emulator.log")
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def viewer_dist() -> Path:
    """The OHIF Viewer build, by the project's own install step (a no-op once installed)."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run(["bash", str(root / "deploy/dev/ohif.sh")], check=True, timeout=600)
    return root / "var/ohif/dist"
