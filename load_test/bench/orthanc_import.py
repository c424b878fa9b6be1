"""`make bench` (Orthanc source): a site whose modalities send to Orthanc, and dicomflow
following it. The default stack as `dicomflow up` starts it with `ORTHANC_URL` set (so the
orthanc-watcher runs, on its defaults: the /changes feed every 2 s), a fresh database, ready;
then 4 clients POST the synthetic corpus to that Orthanc's REST API, as in `ingest`'s
reference. Timed from the first upload until every instance is indexed here (rows in
`instances`), beside Orthanc's own ingest of the same files in the same run (its 4-client
REST rate), and the lag: how long after Orthanc had the last instance we had indexed it.

Printed: both rates, their ratio, the lag, CPU ms/instance per process of our stack (as in
`ingest`, from /proc) and Orthanc's, and the load average.

    python -m load_test.bench.orthanc_import --count 1000 --rounds 2

Only loopback ports chosen free for this run; everything started is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from load_test.bench.ingest import PG, Up, cpu_by_owner, load, processes, report_cpu, upload
from load_test.bench.pipeline import corpus
from load_test.peers import Orthanc

DEADLINE_S = 900.0  # a round that has not indexed everything by then has failed


async def indexed(db: str) -> int:
    conn = await asyncpg.connect(f"{PG}/{db}")
    try:
        return int(await conn.fetchval("SELECT count(*) FROM instances"))
    finally:
        await conn.close()


async def one_round(work: Path, files: list[Path], run: Path) -> dict[str, Any]:
    orthanc = Orthanc(root=run / "orthanc")
    orthanc.start()
    assert orthanc.process is not None
    db = f"dicomflow_bench_{uuid.uuid4().hex[:8]}"
    os.environ |= {
        "ORTHANC_URL": orthanc.url,
        "ORTHANC_USERNAME": orthanc.username,
        "ORTHANC_PASSWORD": orthanc.password,
    }
    up = Up(var=run / "dicomflow", db=db, corpus=work / "corpus")
    n = len(files)
    try:
        up.start()
        assert up.process is not None
        await up.wait_ready()
        await asyncio.sleep(2)  # start-up work settles; the watcher has polled an empty feed
        ours0, _ = cpu_by_owner(up.process.pid, db)
        theirs0 = processes()[orthanc.process.pid].cpu
        load0 = load()
        t0 = time.perf_counter()
        uploading = asyncio.create_task(upload(orthanc, files))
        while (count := await indexed(db)) < n:
            if time.perf_counter() - t0 > DEADLINE_S:
                raise RuntimeError(f"{count} of {n} indexed after {DEADLINE_S:.0f} s")
            if uploading.done() and uploading.exception() is not None:
                raise RuntimeError("upload to Orthanc failed") from uploading.exception()
            await asyncio.sleep(0.2)
        seconds = time.perf_counter() - t0
        theirs_s = await uploading
        ours1, _ = cpu_by_owner(up.process.pid, db)
        theirs = processes()[orthanc.process.pid].cpu - theirs0
        print(
            f"  Orthanc REST ingest (4 clients): {n / theirs_s:.0f} instances/s "
            f"({theirs_s:.1f}s); CPU {1000 * theirs / n:.2f} ms/instance"
        )
        print(
            f"  dicomflow, every instance indexed: {n / seconds:.0f} instances/s ({seconds:.1f}s;"
            f" {seconds - theirs_s:.1f}s after Orthanc had the last; {load0} -> {load()})"
        )
        cpu_ms = report_cpu("CPU of our stack until indexed:", ours0, ours1, n)
        return {
            "inst_s": n / seconds,
            "orthanc_inst_s": n / theirs_s,
            "lag_s": seconds - theirs_s,
            "cpu_ms": cpu_ms,
            "orthanc_cpu_ms": 1000 * theirs / n,
            "cpu_ms_by_process": {k: 1000 * (ours1[k] - ours0.get(k, 0)) / n for k in ours1},
        }
    finally:
        up.stop()
        orthanc.stop()
        for name in ("ORTHANC_URL", "ORTHANC_USERNAME", "ORTHANC_PASSWORD"):
            os.environ.pop(name, None)
        conn = await asyncpg.connect(f"{PG}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        finally:
            await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=int(os.environ.get("BENCH_COUNT", 2000)))
    parser.add_argument("--work", type=Path, default=Path("var/bench"))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 3)))
    args = parser.parse_args()
    work = args.work.absolute()
    files = corpus(work / "corpus", args.count)
    size = sum(f.stat().st_size for f in files)
    print(f"\ncorpus: {len(files)} instances, {size / 1e6:.0f} MB, {os.cpu_count()} cores")
    runs = work / "orthanc-runs"
    shutil.rmtree(runs, ignore_errors=True)
    rounds = []
    try:
        for n in range(1, max(1, args.rounds) + 1):
            print(f"\nround {n} of {args.rounds}: Orthanc ingesting, dicomflow following it")
            rounds.append(asyncio.run(one_round(work, files, runs / f"round-{n}")))
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    ours = statistics.median(r["inst_s"] for r in rounds)
    theirs = statistics.median(r["orthanc_inst_s"] for r in rounds)
    print(
        f"\nover {len(rounds)} round(s), median: dicomflow {ours:.0f}/s to indexed, Orthanc "
        f"{theirs:.0f}/s ingest, ratio {ours / theirs:.2f}x; lag after Orthanc "
        f"{statistics.median(r['lag_s'] for r in rounds):.1f}s; CPU "
        f"{statistics.median(r['cpu_ms'] for r in rounds):.2f} ms/instance (Orthanc "
        f"{statistics.median(r['orthanc_cpu_ms'] for r in rounds):.2f})"
    )


if __name__ == "__main__":
    main()
