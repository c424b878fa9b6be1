"""PACS watcher state: the watermark per upstream PACS, and what the index holds per study."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from libs.db import Conn


async def watermark(conn: Conn, pacs: str) -> date | None:
    value = await conn.fetchval("SELECT watermark FROM pacs_watermarks WHERE pacs = $1", pacs)
    return value if isinstance(value, date) else None


async def set_watermark(conn: Conn, pacs: str, value: date, error: str | None = None) -> None:
    await conn.execute(
        """
        INSERT INTO pacs_watermarks (pacs, watermark, last_error) VALUES ($1, $2, $3)
        ON CONFLICT (pacs) DO UPDATE
           SET watermark = EXCLUDED.watermark, last_error = EXCLUDED.last_error,
               last_poll_at = now()
        """,
        pacs,
        value,
        error,
    )


async def indexed_counts(conn: Conn, study_uids: Sequence[str]) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT study_uid, instance_count FROM studies WHERE study_uid = ANY($1::text[])",
        list(study_uids),
    )
    return {r["study_uid"]: int(r["instance_count"]) for r in rows}
