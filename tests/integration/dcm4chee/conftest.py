"""A fresh archive database per test: dcm4chee-arc-light 5.35 on PostgreSQL and on MariaDB,
and the legacy 2.x schema on MariaDB and on PostgreSQL. A missing server fails the test with
the reason."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from load_test.dcm4chee_archive import ArchiveDatabase, close_archive, open_archive

KINDS = ["arc5-postgresql", "arc5-mariadb", "dcm4chee2-mariadb", "dcm4chee2-postgresql"]


@pytest.fixture(params=KINDS)
async def archive(request: pytest.FixtureRequest) -> AsyncIterator[ArchiveDatabase]:
    db = await open_archive(request.param)
    try:
        yield db
    finally:
        await close_archive(db)
