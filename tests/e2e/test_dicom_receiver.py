"""The C-STORE receiver in the stack, driven by DCMTK's storescu."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
from functools import partial
from pathlib import Path

import asyncpg
import httpx
import pydicom
import pytest

from libs.dicom.synthetic import generate_corpus
from libs.tools.dev_broker import free_port
from load_test.dimse import mixed_corpus, send_corpus, storescu, storescu_argv
from load_test.peers import PEER_ENV
from load_test.process_stack import Stack
from tests.polling import eventually

RECEIVER = "dicom-receiver"


def start_receiver(stack: Stack, port: int) -> None:
    stack.env.update(
        RECEIVER_PORT=str(port),
        RECEIVER_AE_TITLE="DICOMFLOW",
        RECEIVER_ALLOWED_CALLERS="STORESCU,OTHER@127.0.0.1",
        RECEIVER_STAGING_DIR=str(stack.root / "staging" / "receiver"),  # as the pipeline has it
        RECEIVER_MIN_FREE_MB="0",
    )
    stack.start(RECEIVER)


async def value_is(pool: asyncpg.Pool, sql: str, expected: object) -> bool:
    return bool(await pool.fetchval(sql) == expected)


async def final_counts(pool: asyncpg.Pool, total: int) -> dict[str, int]:
    pending = "SELECT count(*) FROM ingest_files WHERE status <> 'pending'"
    await eventually(partial(value_is, pool, pending, total), 120, what=pending)
    rows = await pool.fetch("SELECT status, count(*) AS n FROM ingest_files GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def metric(stack: Stack, name: str) -> float:
    async with httpx.AsyncClient() as c:
        body = (await c.get(f"http://127.0.0.1:{stack.ports[RECEIVER]}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name))


async def test_storescu_instances_indexed_then_duplicates_and_unknown_ae_rejected(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    uids = await asyncio.to_thread(mixed_corpus, stack.root / "send", 200)
    port = free_port()
    start_receiver(stack, port)
    await stack.wait_ready([RECEIVER])

    sent = await asyncio.to_thread(send_corpus, "127.0.0.1", port, stack.root / "send")
    assert sent.returncode == 0, sent.output
    assert await final_counts(pool, len(uids)) == {"indexed": len(uids)}
    indexed = await pool.fetch("SELECT sop_instance_uid FROM instances")
    assert sorted(r["sop_instance_uid"] for r in indexed) == sorted(uids)
    sources = await pool.fetch(
        "SELECT DISTINCT source, origin LIKE 'STORESCU@127.0.0.1:%' AS o FROM ingest_files"
    )
    assert [(r["source"], r["o"]) for r in sources] == [("dicom:STORESCU", True)]

    # Staged as sent: each file keeps its transfer syntax, and (where DCMTK sends a file's
    # dataset unchanged: the uncompressed synthetic ones) its exact dataset bytes.
    staged = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for p in (stack.root / "staging").rglob("*.dcm")
        if p.stat().st_size  # not the empty files created ahead (handlers.FilePool)
    }
    compared = 0
    for path in (stack.root / "send").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        copy = staged[str(ds.SOPInstanceUID)]
        syntax = pydicom.dcmread(copy, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert syntax == ds.file_meta.TransferSyntaxUID, path
        if path.relative_to(stack.root / "send").parts[0] == "uncompressed":
            assert dataset_bytes(copy) == dataset_bytes(path), path
            compared += 1
    assert compared == 100  # half of the synthetic instances stay in that folder
    # Stored without a copy: a stored object is the staged file's inode (ADR 0034), but
    # where the extractor read a file within 20 ms of its last change (no stamp: copied
    # after hashing, ADR 0031).
    stored = {p.stat().st_ino for p in (stack.root / "storage").rglob("*.dcm")}
    linked = {p.stat().st_ino for p in staged.values()} & stored
    assert len(linked) >= 0.9 * len(staged), (len(linked), len(staged))

    again = await asyncio.to_thread(send_corpus, "127.0.0.1", port, stack.root / "send")
    assert again.returncode == 0, again.output
    counts = await final_counts(pool, 2 * len(uids))
    assert counts == {"indexed": len(uids), "duplicate": len(uids)}
    assert await pool.fetchval("SELECT count(*) FROM instances") == len(uids)

    rejected = await asyncio.to_thread(
        storescu, "127.0.0.1", port, stack.root / "send" / "rle", calling="INTRUDER"
    )
    assert rejected.returncode != 0
    assert "Calling AE Title Not Recognized" in rejected.output, rejected.output
    # A rejected caller is counted under one bounded label, never under its own title.
    assert (
        await metric(
            stack, 'dicomflow_dicom_receiver_associations_total{calling_ae="(not allowed)"'
        )
        == 1
    )
    assert await metric(
        stack, 'dicomflow_dicom_receiver_instances_total{calling_ae="STORESCU",status="0x0000"}'
    ) == 2 * len(uids)
    assert await pool.fetchval("SELECT count(*) FROM ingest_files") == 2 * len(uids)


def dataset_bytes(path: Path) -> bytes:
    """A Part-10 file's bytes after its file meta group."""
    data = path.read_bytes()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    meta_len = int(ds.file_meta.FileMetaInformationGroupLength)
    return data[132 + 12 + meta_len :]


async def test_receiver_killed_mid_association_loses_nothing_acknowledged(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    folder = stack.root / "send"
    await asyncio.to_thread(generate_corpus, folder, 300, rows=256, columns=256)
    uids = [
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in folder.rglob("*.dcm")
    ]
    port = free_port()
    start_receiver(stack, port)
    await stack.wait_ready([RECEIVER])

    sender = subprocess.Popen(
        storescu_argv(
            "127.0.0.1",
            port,
            stack.root / "send",
            calling="STORESCU",
            called="DICOMFLOW",
            extra=["-v"],
        ),
        env=PEER_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    recorded = "SELECT count(*) FROM ingest_files"
    await eventually(partial(at_least, pool, recorded, 40), 60, what=recorded, interval=0.05)
    stack.kill(RECEIVER)
    output, _ = await asyncio.to_thread(sender.communicate, timeout=120)
    acknowledged = acknowledged_files(output)
    assert sender.returncode != 0, output
    # 40 ledger rows before the kill; the last may have been recorded but not yet answered.
    assert 39 <= len(acknowledged) < len(uids), output[-2000:]

    # Every acknowledged instance reaches the index without any resend.
    ack_uids = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in acknowledged
    }
    missing = set(ack_uids)

    async def all_indexed() -> bool:
        rows = await pool.fetch("SELECT sop_instance_uid FROM instances")
        missing.intersection_update(ack_uids - {r["sop_instance_uid"] for r in rows})
        return not missing

    await eventually(all_indexed, 60, what=lambda: f"not indexed: {missing}", interval=0.25)

    start_receiver(stack, port)
    await stack.wait_ready([RECEIVER])
    resent = await asyncio.to_thread(storescu, "127.0.0.1", port, folder)
    assert resent.returncode == 0, resent.output
    instances = "SELECT count(*) FROM instances"
    pending = "SELECT count(*) FROM ingest_files WHERE status = 'pending'"
    await eventually(partial(value_is, pool, instances, len(uids)), 120, what=instances)
    await eventually(partial(value_is, pool, pending, 0), 120, what=pending)
    stored = [p for p in (stack.root / "storage").rglob("*") if p.is_file()]
    assert len(stored) == len(uids)


def free_port_pair() -> int:
    """A port p with p + 1 free too: the ops ports of two receiver processes."""
    for _ in range(100):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise AssertionError("no two consecutive free ports")


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


async def process_metric(ops_port: int, name: str) -> float:
    async with httpx.AsyncClient() as c:
        body = (await c.get(f"http://127.0.0.1:{ops_port}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name))


async def test_two_receiver_processes_share_the_port_and_stop_together(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    """RECEIVER_PROCESSES=2 (ADR 0026): both processes take associations on one DICOM port,
    every instance is indexed; SIGTERM to the first stops both; a second that dies stops the
    service (exit 1) rather than leave the port half served."""
    folder = stack.root / "send"
    await asyncio.to_thread(generate_corpus, folder, 6, rows=64, columns=64)
    uids = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in folder.rglob("*.dcm")
    }
    port, ops = free_port(), free_port_pair()
    stack.ports[RECEIVER] = ops
    stack.env.update(RECEIVER_PROCESSES="2", RECEIVER_OPS_PORT=str(ops))
    start_receiver(stack, port)
    await stack.wait_ready([RECEIVER])
    async with httpx.AsyncClient() as c:  # the second process's ops port is ops + 1

        async def second_ready() -> bool:
            try:
                return (await c.get(f"http://127.0.0.1:{ops + 1}/ready")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(second_ready, 120, what="second receiver process ready")

    # The kernel picks the process per association: send until each has stored some.
    stored = 'dicomflow_dicom_receiver_instances_total{calling_ae="STORESCU",status="0x0000"}'
    sends = 0
    while sends < 40 and not all(
        [await process_metric(ops, stored), await process_metric(ops + 1, stored)]
    ):
        sent = await asyncio.to_thread(storescu, "127.0.0.1", port, folder)
        assert sent.returncode == 0, sent.output
        sends += 1
    per_process = [await process_metric(ops, stored), await process_metric(ops + 1, stored)]
    assert all(per_process), per_process
    assert sum(per_process) == sends * len(uids)
    counts = await final_counts(pool, sends * len(uids))
    assert counts == {"indexed": len(uids), "duplicate": (sends - 1) * len(uids)}

    first = stack.procs[RECEIVER]
    (second,) = children(first.pid)
    assert stack.kill(RECEIVER, signal.SIGTERM) == 0
    assert not Path(f"/proc/{second}").exists()  # reaped by the first before it exited

    start_receiver(stack, port)
    await stack.wait_ready([RECEIVER])
    await eventually(lambda: len(children(stack.procs[RECEIVER].pid)) == 1, 60)
    (second,) = children(stack.procs[RECEIVER].pid)
    os.kill(second, signal.SIGKILL)
    assert await asyncio.to_thread(stack.procs[RECEIVER].wait, 60) == 1


async def at_least(pool: asyncpg.Pool, sql: str, n: int) -> bool:
    return bool(await pool.fetchval(sql) >= n)


def acknowledged_files(output: str) -> list[Path]:
    """Files storescu -v reports as answered with Success."""
    done: list[Path] = []
    current: Path | None = None
    for line in output.splitlines():
        if m := re.search(r"Sending file: (.+)$", line):
            current = Path(m.group(1).strip())
        elif "Received Store Response (Success)" in line and current is not None:
            done.append(current)
            current = None
    return done


pytestmark = pytest.mark.e2e
