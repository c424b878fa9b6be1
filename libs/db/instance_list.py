"""The instances of one series, in display order, for pages that page through its images."""

from __future__ import annotations

from dataclasses import dataclass

from libs.db import Conn


@dataclass(frozen=True)
class InstanceRow:
    sop_uid: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    frames: int | None
    size_bytes: int


async def series_instances(conn: Conn, study_uid: str, series_uid: str) -> list[InstanceRow] | None:
    """Instances ordered by instance number (then UID); None when the study has no such
    series, an empty list never (a series row exists only with its instances)."""
    rows = await conn.fetch(
        """SELECT sop_instance_uid AS sop_uid, instance_number, rows, columns,
                  number_of_frames AS frames, size_bytes
             FROM instances WHERE study_uid = $1 AND series_uid = $2
            ORDER BY instance_number NULLS LAST, sop_instance_uid""",
        study_uid,
        series_uid,
    )
    if not rows:
        return None
    return [InstanceRow(**dict(r)) for r in rows]
