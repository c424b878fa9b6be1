"""`make bench`, receiver part: C-STORE into dicomflow next to DCMTK's storescp.

On the same synthetic files (CT 512x512 and MR 256x256, 16-bit), in the same run, with 1 and
with 4 storescu associations in parallel:
1. DCMTK `storescp` (TCP_NODELAY=1, bit-preserving `+B`, `--fork` for parallel senders)
   receiving and writing them (page cache only: storescp never fsyncs);
2. a plain pynetdicom SCP writing the raw bytes it is sent (unlimited PDU, TCP_NODELAY, no
   fsync): what a receiver on pynetdicom's own transport reaches;
3. the dicomflow receiver alone (broker and PostgreSQL up, pipeline stopped): the
   receive-and-acknowledge step, every answered instance fdatasynced, in the ledger and
   acknowledged by Kafka; once more with RECEIVER_FSYNC=false, to show what durability costs;
4. the dicomflow receiver with the whole pipeline running: acknowledged, and until every
   instance is indexed (the pipeline shares the 2 cores with the receiver).
Prints each rate and its ratio to storescp.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.tools.dev_broker import broker_argv, free_port, wait_for_port
from load_test.bench.pipeline import PG, corpus
from load_test.dimse import StoreSCP, storescu_argv
from load_test.peers import PEER_ENV
from load_test.process_stack import PIPELINE, Stack, stack_env

RECEIVER = "dicom-receiver"


def send(port: int, called: str, files: list[Path], parallel: int) -> float:
    """storescu over `files` split across `parallel` associations; seconds until all end."""
    t = time.perf_counter()
    procs = []
    for i in range(parallel):
        argv = storescu_argv("127.0.0.1", port, files[0], calling="BENCH", called=called)
        argv = [*argv[:-1], *map(str, files[i::parallel])]  # files, not a folder
        argv.remove("+sd")
        argv.remove("+r")
        procs.append(subprocess.Popen(argv, env=PEER_ENV, stdout=subprocess.DEVNULL))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"storescu failed: exit codes {codes}")
    return time.perf_counter() - t


def storescp_rate(work: Path, files: list[Path], parallel: int) -> float:
    out = work / "storescp"
    shutil.rmtree(out, ignore_errors=True)
    scp = StoreSCP(out, fork=parallel > 1)
    scp.start()
    try:
        wait_for_port("127.0.0.1", scp.port)
        seconds = send(scp.port, scp.aet, files, parallel)
    finally:
        scp.stop()
    written = sum(1 for _ in out.rglob("*") if _.is_file())
    assert written == len(files), f"storescp wrote {written} of {len(files)}"
    return len(files) / seconds


def pynetdicom_rate(work: Path, files: list[Path], parallel: int) -> float:
    """A plain pynetdicom C-STORE SCP writing `encoded_dataset()` (no fsync)."""
    from pynetdicom import AE, evt
    from pynetdicom.presentation import AllStoragePresentationContexts

    from libs.dicom_net.transport import NODELAY_HANDLERS, TRANSFER_SYNTAXES

    out = work / "pynetdicom"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    def on_store(event: Any) -> int:
        with open(out / f"{uuid.uuid4().hex}.dcm", "xb") as f:
            f.write(event.encoded_dataset())
        return 0

    ae = AE(ae_title="PYNETDICOM")
    ae.maximum_pdu_size = 0
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
    port = free_port()
    handlers: list[Any] = [*NODELAY_HANDLERS, (evt.EVT_C_STORE, on_store)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    assert server is not None
    try:
        seconds = send(port, "PYNETDICOM", files, parallel)
    finally:
        server.shutdown()
    written = sum(1 for _ in out.iterdir())
    assert written == len(files), f"pynetdicom wrote {written} of {len(files)}"
    return len(files) / seconds


@asynccontextmanager
async def receiver_stack(
    work: Path, *, pipeline: bool, fsync: bool = True
) -> AsyncIterator[tuple[Stack, asyncpg.Pool, int]]:
    db = f"dicomflow_bench_{uuid.uuid4().hex[:8]}"
    url = f"{PG}/{db}"
    pool = await create_pool(url, size=2)
    await migrate(pool)
    kport = free_port()
    broker = subprocess.Popen(
        broker_argv(kport), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port("127.0.0.1", kport)
    state = work / "receiver-state"
    shutil.rmtree(state, ignore_errors=True)
    env, ports = stack_env(state, url, f"127.0.0.1:{kport}")
    dport = free_port()
    env.update(
        KAFKA_TOPIC_PARTITIONS="6",
        LOG_LEVEL="WARNING",
        RECEIVER_PORT=str(dport),
        RECEIVER_STAGING_DIR=str(state / "staging"),
        RECEIVER_MIN_FREE_MB="0",
        RECEIVER_FSYNC=str(fsync).lower(),
    )
    stack = Stack(root=state, env=env, ports=ports)
    names = [*PIPELINE, RECEIVER] if pipeline else [RECEIVER]
    for name in names:
        stack.start(name)
    try:
        await stack.wait_ready(names)
        yield stack, pool, dport
    finally:
        stack.stop_all()
        broker.terminate()
        broker.wait()
        await pool.close()
        conn = await asyncpg.connect(f"{PG}/postgres")
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()


async def until_indexed(pool: asyncpg.Pool, total: int, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    sql = "SELECT count(*) FROM ingest_files WHERE status <> 'pending'"
    while await pool.fetchval(sql) < total:
        if time.monotonic() > deadline:
            raise RuntimeError("not all received instances were indexed in time")
        await asyncio.sleep(0.1)


async def receiver_rates(work: Path, files: list[Path], parallel: int) -> dict[str, float]:
    """Each round on a fresh stack: the receiver alone (fsync on, off), then with the
    pipeline (acknowledged, indexed)."""
    out = {}
    for label, fsync in (("alone", True), ("alone, no fsync", False)):
        async with receiver_stack(work, pipeline=False, fsync=fsync) as (_, _, port):
            seconds = await asyncio.to_thread(send, port, "DICOMFLOW", files, parallel)
            out[label] = len(files) / seconds
    async with receiver_stack(work, pipeline=True) as (_, pool, port):
        t = time.perf_counter()
        acked = await asyncio.to_thread(send, port, "DICOMFLOW", files, parallel)
        await until_indexed(pool, len(files))
        out["with pipeline"] = len(files) / acked
        out["indexed"] = len(files) / (time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=int(os.environ.get("BENCH_DIMSE_COUNT", 600)))
    parser.add_argument("--work", type=Path, default=Path("var/bench"))
    args = parser.parse_args()
    work = args.work.absolute()
    files = corpus(work / "dimse-corpus", args.count)
    total = sum(f.stat().st_size for f in files)
    print(f"\nC-STORE: {len(files)} instances, {total / 1e6:.0f} MB, on {os.cpu_count()} cores")
    for parallel in (1, 4):
        ours = asyncio.run(receiver_rates(work, files, parallel))
        ref = storescp_rate(work, files, parallel)
        plain = pynetdicom_rate(work, files, parallel)
        print(f"\n  {parallel} association(s):")
        rows = [
            ("DCMTK storescp (receive + write)", ref),
            ("pynetdicom SCP (raw write, no fsync)", plain),
            ("dicomflow receiver alone (acked)", ours["alone"]),
            ("  same, RECEIVER_FSYNC=false", ours["alone, no fsync"]),
            ("dicomflow + pipeline (acked)", ours["with pipeline"]),
            ("dicomflow + pipeline (indexed)", ours["indexed"]),
        ]
        for label, rate in rows:
            print(f"    {label:<40} {rate:>7.0f} inst/s  {rate / ref:.2f}x")


if __name__ == "__main__":
    main()
