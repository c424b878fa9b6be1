"""A dcm4chee archive (arc-light 5.35 on MariaDB) read in full mode by the dcm4chee watcher
process: its files go through the whole pipeline into the index, once, across a restart."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from load_test.dcm4chee_archive import Instance, close_archive, open_archive
from load_test.process_stack import Stack

T0 = datetime(2024, 3, 1, 8, 0, 0)


def instance(root: Path, study_uid: str, n: int) -> Instance:
    inst = Instance(
        series_uid=synthetic_uid(f"e2e-series-{n % 2}"),
        sop_uid=synthetic_uid(f"e2e-sop-{n}"),
        storage="fs1",
        path=f"2024/03/01/{n}.dcm",
        size=0,
    )
    ds = make_dataset(
        patient_id="P-e2e",
        patient_name="ARCHIVE^ERIKA",
        study_uid=study_uid,
        series_uid=inst.series_uid,
        sop_uid=inst.sop_uid,
        series_number=n % 2 + 1,
        instance_number=n + 1,
    )
    write_instance(root / inst.path, ds)
    return inst


async def wait_study(stack: Stack, study_uid: str, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    async with stack.client() as c:
        while True:
            r = await c.get(f"/v1/studies/{study_uid}")
            if r.status_code == 200 and r.json()["instance_count"] >= count:
                body: dict[str, Any] = r.json()
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{r.status_code} {r.text}\n{stack.tail('dcm4chee-watcher')}")
            await asyncio.sleep(0.25)


async def test_full_mode_indexes_archive_instances_end_to_end(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    archive = await open_archive("arc5-mariadb")
    root = stack.root / "dcm4chee-fs1"
    study_uid = synthetic_uid("e2e-study")
    try:
        pk = await archive.writer.add_study(
            patient_id="P-e2e",
            patient_name="ARCHIVE^ERIKA",
            study_uid=study_uid,
            description="archive study",
            when=T0,
        )
        for n in range(3):
            await archive.writer.add_instance(pk, instance(root, study_uid, n), T0)
        stack.env.update(
            DCM4CHEE_ARCHIVE_URL=archive.url,
            DCM4CHEE_MODE="full",
            DCM4CHEE_NAME="e2e-pacs",
            DCM4CHEE_STORAGE_ROOTS=f"fs1={root}",
            DCM4CHEE_POLL_INTERVAL_SECONDS="0.5",
            DCM4CHEE_SETTLE_SECONDS="0",
        )
        stack.start("dcm4chee-watcher")
        await stack.wait_ready(["dcm4chee-watcher"])
        study = await wait_study(stack, study_uid, 3)
        assert study["patient"]["patient_name"] == "ARCHIVE^ERIKA", study

        # Stopped, the archive gets one more instance; restarted, only that one is taken.
        assert stack.kill("dcm4chee-watcher", signal.SIGTERM) == 0
        later = T0 + timedelta(minutes=1)
        await archive.writer.add_instance(pk, instance(root, study_uid, 3), later)
        await archive.writer.touch_study(pk, later, "archive study")
        stack.start("dcm4chee-watcher")
        await stack.wait_ready(["dcm4chee-watcher"])
        assert (await wait_study(stack, study_uid, 4))["instance_count"] == 4

        tasks = await pool.fetch("SELECT id::text FROM import_tasks WHERE kind = 'dcm4chee'")
        assert len(tasks) == 2
        for row in tasks:
            task = await stack.wait_task(row["id"])
            assert task["status"] == "completed", task
        files = await pool.fetch("SELECT status FROM ingest_files WHERE source = 'dcm4chee'")
        assert sorted(r["status"] for r in files) == ["indexed"] * 4
    finally:
        await close_archive(archive)
