"""`make bench`, routing part: the router's sender forwarding stored instances to DCMTK's
storescp, next to DCMTK's storescu sending the same files to the same kind of storescp.

Same synthetic files (CT 512x512 and MR 256x256, 16-bit), same run, one association each:
1. `storescu` (TCP_NODELAY=1) -> `storescp` (+B): the reference C-STORE SCU;
2. the router's `Sender` (in this process) draining a `route_queue` of the same instances in
   a fresh PostgreSQL database: per instance a `sending` and a `sent` UPDATE around the
   C-STORE of the stored bytes, rounds of ROUTER_SEND_BATCH (100) on one association each.
Prints rates and the CPU ms per instance of each sender process (PostgreSQL's own CPU is
not counted: two single-row UPDATEs per instance) and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry

from libs.db import routing
from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.db.routing import Routed
from libs.dicom.extract import extract_file
from libs.storage import instance_key
from libs.storage.local import LocalStore
from libs.tools.dev_broker import wait_for_port
from load_test.bench.pipeline import PG, corpus
from load_test.dimse import StoreSCP, storescu_argv
from load_test.peers import PEER_ENV
from services.router.bootstrap import PgRoutes, StoredFiles, client_for
from services.router.config import RouterSettings
from services.router.metrics import RouterMetrics
from services.router.rules import Destination
from services.router.sender import Sender


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def storescu_run(work: Path, files: list[Path]) -> tuple[float, float]:
    """(seconds, CPU seconds of storescu) for one association over `files`."""
    out = work / "storescp-reference"
    shutil.rmtree(out, ignore_errors=True)
    scp = StoreSCP(out)
    scp.start()
    try:
        wait_for_port("127.0.0.1", scp.port)
        argv = storescu_argv("127.0.0.1", scp.port, files[0], calling="BENCH", called=scp.aet)
        argv = [*argv[:-1], *map(str, files)]
        argv.remove("+sd")
        argv.remove("+r")
        cpu, t = children_cpu(), time.perf_counter()
        subprocess.run(argv, env=PEER_ENV, stdout=subprocess.DEVNULL, check=True)
        seconds, cpu = time.perf_counter() - t, children_cpu() - cpu
    finally:
        scp.stop()
    written = sum(1 for p in out.iterdir() if p.is_file())
    assert written == len(files), f"storescp wrote {written} of {len(files)}"
    return seconds, cpu


def stored(work: Path, files: list[Path]) -> tuple[LocalStore, list[Routed]]:
    store = LocalStore((work / "storage").as_uri())
    rows = []
    for path in files:
        h, _ = extract_file(str(path))
        key = instance_key(h.study.study_uid, h.series.series_uid, h.instance.sop_instance_uid)
        target = store.path_for(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(path, target)
        rows.append(
            Routed(
                destination="scp",
                sop_instance_uid=h.instance.sop_instance_uid,
                study_uid=h.study.study_uid,
                series_uid=h.series.series_uid,
                sop_class_uid=h.instance.sop_class_uid,
                transfer_syntax_uid=h.instance.transfer_syntax_uid,
                storage_url=store.url_for(key),
                rule="bench",
                correlation_id="bench",
            )
        )
    return store, rows


async def router_run(work: Path, files: list[Path]) -> tuple[float, float]:
    """(seconds, CPU seconds of this process) for the sender draining the queue."""
    store, rows = stored(work, files)
    name = f"dicomflow_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{PG}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    pool = await create_pool(f"{PG}/{name}", size=4)
    out = work / "storescp-router"
    shutil.rmtree(out, ignore_errors=True)
    scp = StoreSCP(out)
    scp.start()
    try:
        await migrate(pool)
        async with pool.acquire() as conn:
            await routing.enqueue(conn, rows)
        wait_for_port("127.0.0.1", scp.port)
        dest = Destination(name="scp", ae_title=scp.aet, host="127.0.0.1", port=scp.port)
        settings = RouterSettings(storage_url=store.url)  # type: ignore[call-arg]
        sender = Sender(
            dest,
            routes=PgRoutes(pool),
            client=client_for(settings, dest),
            files=StoredFiles(store).local,
            metrics=RouterMetrics.create("router", CollectorRegistry()),
            stopping=asyncio.Event(),
            batch=settings.send_batch,
            max_attempts=settings.max_attempts,
            backoff_seconds=settings.backoff_seconds,
            max_backoff_seconds=settings.max_backoff_seconds,
            poll_seconds=settings.poll_seconds,
        )
        cpu, t = time.process_time(), time.perf_counter()
        while await pool.fetchval("SELECT count(*) FROM route_queue WHERE state <> 'sent'"):
            await sender.round()
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    finally:
        scp.stop()
        await pool.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    written = sum(1 for p in out.iterdir() if p.is_file())
    assert written == len(files), f"storescp got {written} of {len(files)} from the router"
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--work", type=Path, default=Path("var/bench/routing"))
    args = parser.parse_args()
    files = corpus(args.work / "corpus", args.count)[: args.count]
    size = sum(p.stat().st_size for p in files) / 1e6
    print(f"{len(files)} instances, {size:.0f} MB, load {os.getloadavg()[0]:.1f}")
    ref_s, ref_cpu = storescu_run(args.work, files)
    ours_s, ours_cpu = asyncio.run(router_run(args.work, files))
    n = len(files)
    for label, s, cpu in (("storescu", ref_s, ref_cpu), ("router", ours_s, ours_cpu)):
        print(
            f"{label:9s} {n / s:7.1f} inst/s {size / s:7.1f} MB/s "
            f"{cpu * 1000 / n:6.2f} ms CPU/instance"
        )
    print(f"router/storescu rate {ref_s / ours_s:.2f}x; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
