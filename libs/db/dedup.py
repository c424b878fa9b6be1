"""Dedup claims: the first discovered file to claim a SOPInstanceUID owns it.

The claim is keyed by the discovered file (ledger id), so a redelivered or
re-emitted discovery of the first copy is recognised as that first copy again,
never as its own duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from libs.db import Conn

Verdict = Literal["new", "same_content_other_uid", "duplicate", "conflict"]


@dataclass(frozen=True)
class Claim:
    verdict: Verdict
    related_sop_instance_uid: str | None = None


async def claim(conn: Conn, *, sop_instance_uid: str, content_sha256: str, file_id: int) -> Claim:
    async with conn.transaction():
        row = await conn.fetchrow(
            """
            INSERT INTO dedup_claims (sop_instance_uid, content_sha256, file_id)
            VALUES ($1, $2, $3)
            ON CONFLICT (sop_instance_uid)
                DO UPDATE SET sop_instance_uid = EXCLUDED.sop_instance_uid
            RETURNING content_sha256, file_id, claimed_at
            """,
            sop_instance_uid,
            content_sha256,
            file_id,
        )
        assert row is not None
        if row["content_sha256"] != content_sha256:
            return Claim("conflict", sop_instance_uid)
        if row["file_id"] != file_id:
            return Claim("duplicate", sop_instance_uid)
        # Only claims older than this one: a redelivered message gets its first verdict
        # again, even after a later UID with the same content has been claimed.
        other = await conn.fetchval(
            """SELECT sop_instance_uid FROM dedup_claims
                WHERE content_sha256 = $1 AND (claimed_at, sop_instance_uid) < ($3, $2)
                ORDER BY claimed_at, sop_instance_uid LIMIT 1""",
            content_sha256,
            sop_instance_uid,
            row["claimed_at"],
        )
        if other is not None:
            return Claim("same_content_other_uid", other)
        return Claim("new")
