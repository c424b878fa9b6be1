"""The receiver's CPU per instance, alone, in a form that survives a busy machine.

Starts a broker, a fresh database and `dicomflow`'s receiver (nothing else), lets it settle,
sends `--count` synthetic instances with storescu over `--parallel` associations, and prints
the receiver's user and system CPU ms/instance (from /proc, its other processes included),
the broker's and PostgreSQL's, the rate, and the load average. Wall-clock rates mean little
when other work shares the cores; CPU time per instance means more, and instructions (with
`--callgrind FILE`: the receiver under valgrind's callgrind, instrumented only while the
instances are sent; `callgrind_annotate FILE.1`) mean the most.

    python -m load_test.bench.receiver_cpu --count 600 --parallel 4 [--processes 2]
    python -m load_test.bench.receiver_cpu --count 200 --callgrind var/bench/cg.out
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.tools.dev_broker import broker_argv, free_port, wait_for_port
from load_test.bench.pipeline import PG, corpus
from load_test.bench.receiver import TICKS, backends_cpu, drop_database, send, tree_cpu
from load_test.process_stack import stack_env


def user_sys(pid: int) -> tuple[float, float]:
    """CPU seconds (user, system) of `pid` and of its live children."""
    user = system = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            f = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(f[1]) == pid:
            user += int(f[11]) / TICKS
            system += int(f[12]) / TICKS
    return user, system


async def ready(url: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            try:
                if (await c.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


async def run(args: argparse.Namespace) -> None:
    work = args.work.absolute()
    files = corpus(work / "dimse-corpus", args.count)
    db = f"dicomflow_bench_{uuid.uuid4().hex[:8]}"
    pool = await create_pool(f"{PG}/{db}", size=1)
    await migrate(pool)
    kport = free_port()
    broker = subprocess.Popen(
        broker_argv(kport), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = work / "receiver-cpu"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    receiver = None
    try:
        wait_for_port("127.0.0.1", kport)
        env, ports = stack_env(state, f"{PG}/{db}", f"127.0.0.1:{kport}")
        dport, ops = free_port(), ports["dicom-receiver"]
        env.update(
            KAFKA_TOPIC_PARTITIONS="6",
            LOG_LEVEL="WARNING",
            RECEIVER_PORT=str(dport),
            RECEIVER_OPS_PORT=str(ops),
            RECEIVER_STAGING_DIR=str(state / "staging"),
            RECEIVER_MIN_FREE_MB="0",
            RECEIVER_PROCESSES=str(args.processes),
        )
        argv = [sys.executable, "-m", "services.dicom_receiver"]
        if args.callgrind:
            out = f"--callgrind-out-file={args.callgrind.absolute()}"
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", out, *argv]
        log = (state / "receiver.log").open("wb")
        receiver = subprocess.Popen(
            argv, env=os.environ | env, stdout=log, stderr=subprocess.STDOUT, cwd=state
        )
        for i in range(args.processes):
            await ready(f"http://127.0.0.1:{ops + i}/ready")
        await asyncio.to_thread(send, dport, "DICOMFLOW", files[:8], args.parallel)  # warm up
        await asyncio.sleep(args.settle)  # start-up work (first requests, lazy imports) ends
        control = ["callgrind_control", "-i"]
        if args.callgrind:
            subprocess.run([*control, "on", str(receiver.pid)], check=True, capture_output=True)
        u0, s0 = user_sys(receiver.pid)
        b0, pg0 = tree_cpu(broker.pid), backends_cpu(db)
        seconds = await asyncio.to_thread(send, dport, "DICOMFLOW", files, args.parallel)
        u1, s1 = user_sys(receiver.pid)
        b1, pg1 = tree_cpu(broker.pid), backends_cpu(db)
        if args.callgrind:
            subprocess.run([*control, "off", str(receiver.pid)], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-d", str(receiver.pid)], check=True)
        n = len(files)
        rows = await pool.fetchval("SELECT count(*) FROM ingest_files")
        assert rows == n + 8, f"{rows} ledger rows for {n + 8} instances sent"
        ms = 1000 / n
        print(
            f"{n} instances, {args.parallel} associations, {args.processes} process(es): "
            f"{n / seconds:.0f} inst/s; receiver CPU {(u1 - u0) * ms:.2f} user + "
            f"{(s1 - s0) * ms:.2f} sys ms/inst; broker {(b1 - b0) * ms:.2f}, PostgreSQL "
            f"{(pg1 - pg0) * ms:.2f}; load {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
    finally:
        if receiver is not None:
            receiver.terminate()
            receiver.wait()
        broker.terminate()
        broker.wait()
        await pool.close()
        await drop_database(db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--parallel", type=int, default=4, help="storescu associations")
    parser.add_argument("--processes", type=int, default=1, help="RECEIVER_PROCESSES")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds idle before")
    parser.add_argument("--callgrind", type=Path, help="run the receiver under callgrind")
    parser.add_argument("--work", type=Path, default=Path("var/bench"))
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
