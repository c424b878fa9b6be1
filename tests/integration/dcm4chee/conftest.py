"""A fresh archive database per test: dcm4chee-arc-light 5.35 on PostgreSQL and on MariaDB,
and the legacy 2.x schema on MariaDB. A missing server fails the test with the reason."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.dcm4chee.archive_rows import (
    DCM4CHEE2_DDL,
    MARIADB_URL,
    PG_SERVER,
    Arc5Writer,
    ArchiveDatabase,
    Dcm4chee2Writer,
    arc_ddl_dir,
    create_mariadb,
    create_pg_arc5,
    drop_mariadb,
    drop_pg,
)

KINDS = ["arc5-postgresql", "arc5-mariadb", "dcm4chee2-mariadb"]


async def open_archive(kind: str) -> tuple[ArchiveDatabase, str]:
    if kind == "arc5-postgresql":
        name, sql = await create_pg_arc5()
        return ArchiveDatabase(
            kind, f"{PG_SERVER}/{name}", "arc5", "postgresql", Arc5Writer(sql), sql
        ), name
    if kind == "arc5-mariadb":
        name, sql = await create_mariadb((arc_ddl_dir() / "create-mariadb.sql").read_text())
        return ArchiveDatabase(
            kind, f"{MARIADB_URL}/{name}", "arc5", "mysql", Arc5Writer(sql), sql
        ), name
    name, sql = await create_mariadb(DCM4CHEE2_DDL)
    return ArchiveDatabase(
        kind, f"{MARIADB_URL}/{name}", "dcm4chee2", "mysql", Dcm4chee2Writer(sql), sql
    ), name


@pytest.fixture(params=KINDS)
async def archive(request: pytest.FixtureRequest) -> AsyncIterator[ArchiveDatabase]:
    db, name = await open_archive(request.param)
    try:
        yield db
    finally:
        await db.sql.close()
        if db.dialect == "postgresql":
            await drop_pg(name)
        else:
            await drop_mariadb(name)
