"""The backend connector's record of what the backend has (migration 0021)."""

from __future__ import annotations

from dataclasses import dataclass

from libs.db import Conn


@dataclass(frozen=True)
class PendingImage:
    sop_instance_uid: str
    series_uid: str
    revision_key: str | None = None  # the latest header correction's bytes (ADR 0025)


async def patient(conn: Conn, patient_id: str) -> str | None:
    value = await conn.fetchval(
        "SELECT backend_id FROM connector_patients WHERE patient_id = $1", patient_id
    )
    return None if value is None else str(value)


async def remember_patient(conn: Conn, patient_id: str, backend_id: str) -> None:
    await conn.execute(
        """INSERT INTO connector_patients (patient_id, backend_id) VALUES ($1, $2)
           ON CONFLICT (patient_id) DO NOTHING""",
        patient_id,
        backend_id,
    )


async def pending_images(conn: Conn, study_uid: str) -> list[PendingImage]:
    """The study's indexed instances the backend does not have yet, in series order."""
    rows = await conn.fetch(
        """SELECT i.sop_instance_uid, i.series_uid, i.revision_key FROM instances i
            WHERE i.study_uid = $1
              AND NOT EXISTS (SELECT 1 FROM connector_images c
                               WHERE c.sop_instance_uid = i.sop_instance_uid)
            ORDER BY i.series_uid, i.instance_number NULLS LAST, i.sop_instance_uid""",
        study_uid,
    )
    return [PendingImage(r["sop_instance_uid"], r["series_uid"], r["revision_key"]) for r in rows]


async def image_done(
    conn: Conn, sop_instance_uid: str, study_uid: str, outcome: str, reason: str | None = None
) -> None:
    await conn.execute(
        """INSERT INTO connector_images (sop_instance_uid, study_uid, outcome, reason)
           VALUES ($1, $2, $3, $4) ON CONFLICT (sop_instance_uid) DO NOTHING""",
        sop_instance_uid,
        study_uid,
        outcome,
        reason,
    )
