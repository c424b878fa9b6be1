"""Which staged files the pipeline is done with: the ledger's finished rows of one source,
in `(finished_at, id)` order from a watermark kept per staging owner and kind."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from libs.db import Conn

# A cancelled file was never read: its staged copy is no more needed than a done one's (the
# source still has it; importing it again means taking it from the source again).
KINDS = {"done": ("indexed", "duplicate", "cancelled"), "kept": ("failed", "conflict")}


@dataclass(frozen=True)
class Finished:
    id: int
    uri: str
    finished_at: datetime


async def finished_since(
    conn: Conn, owner: str, kind: str, *, source_like: str, older_than: datetime, limit: int
) -> list[Finished]:
    """Rows of `kind` finished before `older_than`, after the owner's watermark."""
    rows = await conn.fetch(
        """
        SELECT f.id, f.uri, f.finished_at
          FROM ingest_files f
          LEFT JOIN staging_cleanup c ON c.owner = $1 AND c.kind = $2
         WHERE f.finished_at IS NOT NULL
           AND f.finished_at <= $3
           AND (c.owner IS NULL OR (f.finished_at, f.id) > (c.finished_at, c.file_id))
           AND f.status = ANY($4::text[])
           AND f.source LIKE $5
         ORDER BY f.finished_at, f.id
         LIMIT $6
        """,
        owner,
        kind,
        older_than,
        list(KINDS[kind]),
        source_like,
        limit,
    )
    return [Finished(r["id"], r["uri"], r["finished_at"]) for r in rows]


async def advance(conn: Conn, owner: str, kind: str, last: Finished) -> None:
    await conn.execute(
        """
        INSERT INTO staging_cleanup (owner, kind, finished_at, file_id) VALUES ($1, $2, $3, $4)
        ON CONFLICT (owner, kind) DO UPDATE
           SET finished_at = EXCLUDED.finished_at, file_id = EXCLUDED.file_id, updated_at = now()
        """,
        owner,
        kind,
        last.finished_at,
        last.id,
    )


async def still_needed(
    conn: Conn, uris: list[str], *, done_before: datetime, kept_before: datetime
) -> set[str]:
    """Of `uris`, those a ledger row still needs: pending, or final but within its retention
    (`done_before` / `kept_before`: the cut-off of finished_at for done / kept rows)."""
    rows = await conn.fetch(
        """
        SELECT uri FROM ingest_files
         WHERE uri = ANY($1::text[])
           AND (status = 'pending'
                OR (status = ANY($2::text[]) AND finished_at > $3)
                OR (status = ANY($4::text[]) AND finished_at > $5))
        """,
        uris,
        list(KINDS["done"]),
        done_before,
        list(KINDS["kept"]),
        kept_before,
    )
    return {r["uri"] for r in rows}
