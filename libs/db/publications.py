"""What the central-index publisher delivered: one row per study (migration 0006)."""

from __future__ import annotations

from dataclasses import dataclass

from libs.db import Conn

_LOCK = """SELECT p.study_pk, p.delivered_revision, s.patient_pk
             FROM index_publications p LEFT JOIN studies s ON s.study_uid = p.study_uid
            WHERE p.study_uid = $1 FOR UPDATE OF p"""


@dataclass(frozen=True)
class Publication:
    study_pk: int
    patient_pk: int | None  # None only if the study is no longer in the index
    delivered_revision: int


async def lock(conn: Conn, study_uid: str) -> Publication:
    """The study's row, created on first sight, locked until the transaction ends: call it
    inside a transaction that lasts while the study is delivered."""
    row = await conn.fetchrow(_LOCK, study_uid)
    if row is None:
        # Not a DO UPDATE upsert: that would take a value of the identity on every call.
        await conn.execute(
            "INSERT INTO index_publications (study_uid) VALUES ($1) ON CONFLICT DO NOTHING",
            study_uid,
        )
        row = await conn.fetchrow(_LOCK, study_uid)
    assert row is not None
    return Publication(row["study_pk"], row["patient_pk"], row["delivered_revision"])


async def mark_delivered(conn: Conn, study_uid: str, revision: int) -> None:
    await conn.execute(
        """UPDATE index_publications
              SET delivered_revision = greatest(delivered_revision, $2), delivered_at = now()
            WHERE study_uid = $1""",
        study_uid,
        revision,
    )


async def study_uids(conn: Conn, *, after: str, limit: int) -> list[str]:
    """Every study in the index, in pages (keyset on the primary key)."""
    rows = await conn.fetch(
        "SELECT study_uid FROM studies WHERE study_uid > $1 ORDER BY study_uid LIMIT $2",
        after,
        limit,
    )
    return [r["study_uid"] for r in rows]
