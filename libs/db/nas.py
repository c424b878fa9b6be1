"""NAS watcher state: what each watched file looked like when it was last emitted."""

from __future__ import annotations

from collections.abc import Sequence

from libs.db import Conn, ledger


async def seen_in_dir(conn: Conn, directory: str) -> dict[str, tuple[int, int]]:
    rows = await conn.fetch("SELECT name, size, mtime_ns FROM nas_seen WHERE dir = $1", directory)
    return {r["name"]: (r["size"], r["mtime_ns"]) for r in rows}


async def record_watched(
    conn: Conn,
    directory: str,
    names: Sequence[str],
    sizes: Sequence[int],
    mtimes: Sequence[int],
    new: Sequence[ledger.NewFile],
) -> list[ledger.LedgerRow]:
    """Ledger rows and the seen-state in one transaction: a file is either recorded as
    emitted (and reconciliation re-emits it if the event is lost) or not at all."""
    async with conn.transaction():
        rows = await ledger.record_discovered(conn, new)
        by_uri = {r.uri: r.id for r in rows}
        await conn.execute(
            """INSERT INTO nas_seen (dir, name, size, mtime_ns, file_id)
               SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
               ON CONFLICT (dir, name) DO UPDATE
                  SET size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns,
                      file_id = EXCLUDED.file_id, seen_at = now()""",
            directory,
            list(names),
            list(sizes),
            list(mtimes),
            [by_uri.get(f.uri) for f in new],
        )
    return rows
