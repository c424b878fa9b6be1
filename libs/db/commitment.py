"""Storage commitment's question to the index: is each instance durably stored and indexed?

An instance is `committed` only when the index holds it (a row in `instances`, written after
the storage writer stored it) with the SOP class the modality names. While files received
from the same source are still pending in the ledger (their SOP Instance UID not yet read,
or that very instance on its way) the answer is `pending`: the caller waits, within its
bound. A ledger outcome `failed`/`conflict` for that instance is `failed`; the index holding
it under another SOP class is `class_conflict`; nothing at all is `missing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from libs.db import Conn

State = Literal["committed", "pending", "failed", "class_conflict", "missing"]


async def commitment_states(
    conn: Conn, source: str, references: Sequence[tuple[str, str]]
) -> dict[str, State]:
    """`references` are (SOP Class UID, SOP Instance UID); the answer is keyed by instance."""
    # The source's pending files are read once (not once per reference): a modality asking
    # about a thousand instances while thousands are queued stays one cheap statement.
    rows = await conn.fetch(
        """
        WITH req AS (
            SELECT * FROM unnest($1::text[], $2::text[]) AS r(sop_class_uid, sop_instance_uid)
        ), pend AS MATERIALIZED (
            SELECT sop_instance_uid FROM ingest_files WHERE status = 'pending' AND source = $3
        ), unparsed AS (
            SELECT EXISTS (SELECT 1 FROM pend WHERE sop_instance_uid IS NULL) AS found
        )
        SELECT r.sop_instance_uid,
               CASE
                 WHEN i.sop_instance_uid IS NOT NULL AND i.sop_class_uid = r.sop_class_uid
                   THEN 'committed'
                 WHEN i.sop_instance_uid IS NOT NULL THEN 'class_conflict'
                 WHEN (SELECT found FROM unparsed)
                   OR r.sop_instance_uid IN (SELECT sop_instance_uid FROM pend) THEN 'pending'
                 WHEN EXISTS (
                   SELECT 1 FROM ingest_files f
                    WHERE f.sop_instance_uid = r.sop_instance_uid
                      AND f.status IN ('failed', 'conflict')
                 ) THEN 'failed'
                 ELSE 'missing'
               END AS state
          FROM req r LEFT JOIN instances i ON i.sop_instance_uid = r.sop_instance_uid
        """,
        [c for c, _ in references],
        [i for _, i in references],
        source,
    )
    return {str(r["sop_instance_uid"]): r["state"] for r in rows}
