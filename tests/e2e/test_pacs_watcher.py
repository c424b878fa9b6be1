"""The PACS watcher with a real Orthanc upstream: new studies are retrieved (C-MOVE to our
receiver, or C-GET), and a study that gets more instances upstream is completed."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import date

import asyncpg
import pydicom
import pytest

from libs.broker import free_port
from libs.dicom.synthetic import generate_corpus
from load_test.peers import Orthanc
from load_test.stack import Stack

pytestmark = pytest.mark.e2e


async def study_count(pool: asyncpg.Pool, expected: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        n = await pool.fetchval("SELECT max(instance_count) FROM studies")
        if n == expected:
            return
        assert time.monotonic() < deadline, f"study has {n} instances, expected {expected}"
        await asyncio.sleep(0.25)


@pytest.mark.parametrize("how", ["move", "get"])
async def test_new_and_grown_studies_are_retrieved(
    stack: Stack, pool: asyncpg.Pool, how: str
) -> None:
    generate_corpus(stack.root / "upstream-files", 15, rows=32, columns=32)
    files = sorted((stack.root / "upstream-files").rglob("*.dcm"))
    for path in files:  # a study of today: inside the watcher's moving window
        ds = pydicom.dcmread(path)
        ds.StudyDate = date.today().strftime("%Y%m%d")
        ds.save_as(path, enforce_file_format=True)
    receiver_port = free_port()
    orthanc = Orthanc(
        stack.root / "orthanc",
        modalities={
            "watcher": ("DFWATCHER", "127.0.0.1", free_port()),
            "dicomflow": ("DICOMFLOW", "127.0.0.1", receiver_port),
        },
    )
    orthanc.start()
    try:
        for path in files[:10]:
            orthanc.upload(path)
        stack.env.update(
            RECEIVER_PORT=str(receiver_port),
            RECEIVER_STAGING_DIR=str(stack.root / "staging"),
            RECEIVER_MIN_FREE_MB="0",
            WATCHER_PACS=json.dumps(
                [
                    {
                        "name": "orthanc",
                        "ae_title": "ORTHANC",
                        "host": "127.0.0.1",
                        "port": orthanc.dicom_port,
                        "retrieve": how,
                    }
                ]
            ),
            WATCHER_CALLING_AE="DFWATCHER",
            WATCHER_POLL_INTERVAL_SECONDS="1",
            WATCHER_LOOKBACK_DAYS="2",
            WATCHER_STAGING_DIR=str(stack.root / "pacs-get"),
        )
        stack.start("dicom-receiver")
        stack.start("pacs-watcher")
        await stack.wait_ready(["dicom-receiver", "pacs-watcher"])
        await study_count(pool, 10)

        for path in files[10:]:
            orthanc.upload(path)
        await study_count(pool, 15)
        assert await pool.fetchval("SELECT count(*) FROM instances") == 15
        assert await pool.fetchval("SELECT count(*) FROM pacs_watermarks") == 1
        sources = {r["source"] for r in await pool.fetch("SELECT source FROM ingest_files")}
        assert sources == ({"dicom:ORTHANC"} if how == "move" else {"pacs:orthanc"})
    finally:
        orthanc.stop()
