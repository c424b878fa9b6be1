"""Fixtures for the DICOMweb route tests: local storage, a render worker, the app with its
DICOMweb ports, the seeded index. Imported by the test modules (`from ... import *`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from libs.events import Event
from libs.imaging.isolated import IsolatedRenderer
from libs.ops import Readiness
from libs.storage.local import LocalStore
from services.api.app import create_app
from services.api.config import ApiLimits
from services.api.dicomweb import DicomWebPorts, StowLimits
from services.api.previews import PreviewSource
from tests.integration.api.dicomweb_seed import Seeded, seed


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    return LocalStore(tmp_path_factory.mktemp("storage").as_uri())


@pytest.fixture(scope="module")
def renderer() -> Iterator[IsolatedRenderer]:
    r = IsolatedRenderer(workers=1, memory_limit_mb=1024, timeout_s=30)
    yield r
    r.close()


@pytest.fixture(scope="module")
def files_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dicomweb-files")


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stow-staging")


class Bus:
    """The `publish` port: records what STOW published."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.error: Exception | None = None

    async def publish(self, *events: Event) -> None:
        if self.error is not None:
            raise self.error
        self.events.extend(events)


@pytest.fixture
def bus() -> Bus:
    return Bus()


@pytest.fixture
def app(
    pool: asyncpg.Pool,
    registry: CollectorRegistry,
    store: LocalStore,
    renderer: IsolatedRenderer,
    staging: Path,
    bus: Bus,
) -> FastAPI:
    async def publish(event: object) -> None:
        raise AssertionError("DICOMweb does not create import tasks")

    ports = DicomWebPorts(
        store,
        PreviewSource(store, renderer),
        renderer.executor,
        publish=bus.publish,
        stow=StowLimits(staging_dir=staging, max_instance_bytes=1 << 20),
    )
    return create_app(pool, publish, registry, Readiness(), limits=ApiLimits(), dicomweb=ports)


@pytest.fixture
async def seeded(pool: asyncpg.Pool, store: LocalStore, files_root: Path) -> list[Seeded]:
    return await seed(pool, store, files_root)
