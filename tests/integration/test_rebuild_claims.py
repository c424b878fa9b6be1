"""Objects indexed in one rebuild batch (one transaction) keep the order of their claims:
the second UID with already-claimed content is flagged, whatever the UIDs' order."""

from __future__ import annotations

import asyncpg

from libs.contracts.events import (
    DicomHeader,
    Hashes,
    InstanceAttrs,
    PatientAttrs,
    SeriesAttrs,
    StudyAttrs,
)
from libs.db import rebuild


def _header(sop: str) -> DicomHeader:
    return DicomHeader(
        patient=PatientAttrs(patient_id="P1", patient_name="Test^One"),
        study=StudyAttrs(study_uid="1.2.3"),
        series=SeriesAttrs(series_uid="1.2.3.4", modality="CT"),
        instance=InstanceAttrs(sop_instance_uid=sop),
    )


async def test_same_content_in_one_batch_flags_the_later_claim(pool: asyncpg.Pool) -> None:
    hashes = Hashes(file_sha256="f" * 64, content_sha256="c" * 64, has_pixels=True)
    async with pool.acquire() as conn, conn.transaction():
        (run_id,) = [(await rebuild.start_run(conn, "memory://t", fresh=False)).id]
        for sop in ("1.2.3.4.9", "1.2.3.4.1"):  # the higher UID is claimed first
            outcome = await rebuild.index_object(
                conn,
                run_id,
                url=f"memory://t/{sop}",
                key=f"studies/1.2.3/1.2.3.4/{sop}.dcm",
                size=10,
                header=_header(sop),
                hashes=hashes,
                conflict=False,
            )
            assert outcome == "indexed"
    rows = await pool.fetch(
        "SELECT sop_instance_uid, same_content_as FROM instances ORDER BY sop_instance_uid"
    )
    assert [tuple(r) for r in rows] == [("1.2.3.4.1", "1.2.3.4.9"), ("1.2.3.4.9", None)]
    study = await pool.fetchrow("SELECT instance_count, series_count FROM studies")
    assert tuple(study) == (2, 1)
