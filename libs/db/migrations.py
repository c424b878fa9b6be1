"""Forward-only SQL migrations from `libs/db/migrations/NNNN_name.sql`.

Every service applies pending migrations at start, one at a time under an
advisory lock, so starting several services at once is safe.
"""

from __future__ import annotations

from importlib import resources

import asyncpg

from libs.runtime.logging import get_logger

log = get_logger(__name__)
LOCK_ID = 0x6469636F  # "dico"


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("libs.db") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


async def migrate(pool: asyncpg.Pool) -> list[str]:
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, sql in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)", version
                    )
                applied.append(version)
                log.info("migration applied", version=version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
    return applied
