"""Orthanc watcher state: the /changes cursor per server and every instance taken in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from libs.db import Conn, ledger
from libs.db.locks import LockSpace, lock_for_transaction


@dataclass(frozen=True)
class StagedInstance:
    instance_id: str
    path: str
    file: ledger.NewFile


@dataclass(frozen=True)
class Finished:
    instance_id: str
    staged_path: str
    status: str


async def cursor(conn: Conn, server: str) -> int | None:
    value = await conn.fetchval("SELECT last_seq FROM orthanc_cursor WHERE server = $1", server)
    return None if value is None else int(value)


async def unknown(conn: Conn, server: str, instance_ids: Sequence[str]) -> list[str]:
    """The ids not taken in yet, in the order given, without repeats."""
    known = {
        r["instance_id"]
        for r in await conn.fetch(
            """SELECT instance_id FROM orthanc_instances
                WHERE server = $1 AND instance_id = ANY($2::text[])""",
            server,
            list(instance_ids),
        )
    }
    return [i for i in dict.fromkeys(instance_ids) if i not in known]


async def record(
    conn: Conn, server: str, staged: Sequence[StagedInstance], last_seq: int | None = None
) -> list[ledger.LedgerRow]:
    """Ledger rows for instances not taken in yet, their orthanc_instances rows and (when
    given) the new cursor, in one transaction under the server's lock: an instance is
    recorded exactly once whoever (feed, webhook, another replica) staged it."""
    async with conn.transaction():
        await lock_for_transaction(conn, LockSpace.ORTHANC_SERVER, server)
        fresh = set(await unknown(conn, server, [s.instance_id for s in staged]))
        todo = [s for s in staged if s.instance_id in fresh]
        rows = await ledger.record_discovered(conn, [s.file for s in todo])
        ids = {r.uri: r.id for r in rows}
        await conn.executemany(
            """INSERT INTO orthanc_instances (server, instance_id, file_id, staged_path)
               VALUES ($1, $2, $3, $4)""",
            [(server, s.instance_id, ids[s.file.uri], s.path) for s in todo],
        )
        if last_seq is not None:
            await conn.execute(
                """INSERT INTO orthanc_cursor (server, last_seq) VALUES ($1, $2)
                   ON CONFLICT (server) DO UPDATE SET last_seq = EXCLUDED.last_seq,
                                                      updated_at = now()""",
                server,
                last_seq,
            )
    return rows


async def finished(conn: Conn, server: str, limit: int = 500) -> list[Finished]:
    """Instances whose file reached a stored outcome and whose staged copy is still there."""
    rows = await conn.fetch(
        """SELECT o.instance_id, o.staged_path, f.status
             FROM orthanc_instances o JOIN ingest_files f ON f.id = o.file_id
            WHERE o.server = $1 AND o.cleaned_at IS NULL
              AND f.status IN ('indexed', 'duplicate', 'conflict')
            ORDER BY o.file_id LIMIT $2""",
        server,
        limit,
    )
    return [Finished(r["instance_id"], r["staged_path"], r["status"]) for r in rows]


async def mark_cleaned(conn: Conn, server: str, instance_ids: Sequence[str]) -> None:
    await conn.execute(
        """UPDATE orthanc_instances SET cleaned_at = now()
            WHERE server = $1 AND instance_id = ANY($2::text[])""",
        server,
        list(instance_ids),
    )
