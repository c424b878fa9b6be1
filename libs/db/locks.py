"""PostgreSQL advisory locks with named namespaces: one reader of a thing across replicas.

A lock is (namespace, key): the namespace says what kind of thing is locked (a NAS root, an
ISO inbox...), the key is the thing's name hashed to int4. The numbers are part of the
deployed behaviour (replicas of different versions must agree): never renumber one, add the
next number for a new kind.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import IntEnum

import asyncpg

from libs.db import Conn


class LockSpace(IntEnum):
    NAS_ROOT = 1  # one scanner per watched root
    DCM4CHEE_ARCHIVE = 2  # one reader per archive (by its name)
    ISO_INBOX = 3  # one reader per inbox
    ORTHANC_SERVER = 4  # one writer of an Orthanc server's cursor at a time (transaction)
    REBUILD_INDEX = 5  # one `dicomflow rebuild-index` per storage URL
    ROUTE_DESTINATION = 6  # one router sending to a destination (by its name) at a time


def lock_key(name: str) -> int:
    """The int4 key of a name (advisory keys in the two-key form are int4)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class SingleReader:
    """A session lock taken around one round; a replica that does not get it skips the round."""

    pool: asyncpg.Pool
    space: LockSpace
    name: str

    @asynccontextmanager
    async def held(self) -> AsyncIterator[bool]:
        key = lock_key(self.name)
        async with self.pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", self.space, key):
                yield False
                return
            try:
                yield True
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1, $2)", self.space, key)


async def lock_for_transaction(conn: Conn, space: LockSpace, name: str) -> None:
    """Wait for the lock; it is released when the current transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", space, lock_key(name))
