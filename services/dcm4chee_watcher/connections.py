"""Read-only connection pools to the archive's database: asyncpg for PostgreSQL, asyncmy
for MySQL/MariaDB (ADR 0011). Both refuse writes at the session level."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncmy
import asyncpg
from asyncmy.cursors import DictCursor

from services.dcm4chee_watcher.archive import ArchiveDb

_PLACEHOLDER = re.compile(r"\$(\d+)")


def to_format_style(sql: str) -> str:
    """`$1, $2, ...` (each once, ascending) to the driver's `%s`."""
    numbers = [int(n) for n in _PLACEHOLDER.findall(sql)]
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError("placeholders must be $1, $2, ... in order, each used once")
    if "%" in sql:
        raise ValueError("a literal % in SQL would be read as a placeholder")
    return _PLACEHOLDER.sub("%s", sql)


class PgArchiveDb:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, url: str, *, size: int) -> PgArchiveDb:
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=size,
            command_timeout=300,
            timeout=10,
            server_settings={
                "default_transaction_read_only": "on",
                "application_name": "dicomflow-dcm4chee-watcher",
            },
        )
        assert pool is not None
        return cls(pool)

    async def fetch(self, sql: str, *args: object) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(sql, *args)]

    async def now(self) -> datetime:
        value: datetime = await self.pool.fetchval("SELECT localtimestamp")
        return value

    async def close(self) -> None:
        await self.pool.close()


class MySqlArchiveDb:
    def __init__(self, pool: asyncmy.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, url: str, *, size: int) -> MySqlArchiveDb:
        parts = urlsplit(url)
        pool = await asyncmy.create_pool(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            db=parts.path.lstrip("/"),
            minsize=1,
            maxsize=size,
            autocommit=True,
            charset="utf8mb4",
            connect_timeout=10,
            init_command="SET SESSION TRANSACTION READ ONLY",
        )
        return cls(pool)

    async def fetch(self, sql: str, *args: object) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn, conn.cursor(DictCursor) as cur:
            await cur.execute(to_format_style(sql), args)
            return list(await cur.fetchall())

    async def now(self) -> datetime:
        rows = await self.fetch("SELECT NOW(6) AS now")
        value: datetime = rows[0]["now"]
        return value

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()


async def connect_archive(url: str, dialect: str, *, size: int) -> ArchiveDb:
    if dialect == "postgresql":
        return await PgArchiveDb.connect(url, size=size)
    if dialect == "mysql":
        return await MySqlArchiveDb.connect(url, size=size)
    raise ValueError(f"unsupported archive database {dialect!r}")
