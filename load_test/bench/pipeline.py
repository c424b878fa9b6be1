"""`make bench`: the pipeline end to end against reference tools on the same files.

1. Generates (or reuses) a synthetic corpus: default 2,000 instances (~1 GB), CT 512x512 and
   MR 256x256, 16-bit.
2. Reference figures on those files, in this run: `cat` read rate, single-process pydicom
   header parse, and full read + SHA-256.
3. Starts the stack as separate processes (embedded broker, fresh database, fresh storage),
   imports the corpus through the API and times it until the task is `completed`.
4. Prints instances/s, MB/s, the ratios, and each service's peak RSS.

Not a test: figures vary with the machine; the ratios are what to compare across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg

from libs.broker import broker_argv, free_port, wait_for_port
from libs.db.apikeys import create_key
from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.dicom.synthetic import generate_corpus
from load_test.stack import PIPELINE, Stack, stack_env

PG = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")


def corpus(root: Path, count: int) -> list[Path]:
    marker = root / f".complete-{count}"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        t = time.perf_counter()
        generate_corpus(root, count)
        print(f"generated {count} instances in {time.perf_counter() - t:.1f}s")
        marker.touch()
    return sorted(p for p in root.rglob("*.dcm"))


def rate(label: str, files: list[Path], seconds: float, total: int) -> dict[str, float]:
    r = {"inst_s": len(files) / seconds, "mb_s": total / seconds / 1e6, "seconds": seconds}
    print(f"  {label:<34} {r['inst_s']:>8.0f} inst/s {r['mb_s']:>8.0f} MB/s  ({seconds:.2f}s)")
    return r


def references(files: list[Path], total: int) -> dict[str, dict[str, float]]:
    from pydicom import dcmread

    out = {}
    t = time.perf_counter()
    for i in range(0, len(files), 500):
        subprocess.run(
            ["cat", *map(str, files[i : i + 500])], stdout=subprocess.DEVNULL, check=True
        )
    out["cat"] = rate("cat (read every byte)", files, time.perf_counter() - t, total)
    t = time.perf_counter()
    for f in files:
        dcmread(f, stop_before_pixels=True)
    out["parse"] = rate("pydicom header parse (1 process)", files, time.perf_counter() - t, total)
    t = time.perf_counter()
    for f in files:
        hashlib.sha256(f.read_bytes()).hexdigest()
    out["sha"] = rate("full read + SHA-256 (1 process)", files, time.perf_counter() - t, total)
    return out


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children_rss_mb(pid: int) -> float:
    """Peak RSS of a service's worker processes (the extractor's parsers)."""
    total = 0.0
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for cpid in child.read_text().split():
            try:
                total += peak_rss_mb(int(cpid))
            except OSError:
                continue
    return total


async def pipeline(work: Path, files: list[Path], total: int) -> dict[str, float]:
    db = f"dicomflow_bench_{uuid.uuid4().hex[:8]}"
    url = f"{PG}/{db}"
    pool = await create_pool(url, size=2)
    await migrate(pool)
    async with pool.acquire() as conn:
        _, key = await create_key(conn, "admin", "bench")
    port = free_port()
    broker = subprocess.Popen(
        broker_argv(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port("127.0.0.1", port)
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    env, ports = stack_env(state, url, f"127.0.0.1:{port}")
    env.update(
        NAS_IMPORT_ROOTS=str(work / "corpus"),
        NAS_BATCH_SIZE="500",
        KAFKA_TOPIC_PARTITIONS="6",
        LOG_LEVEL="WARNING",
        EXTRACTOR_WORKERS=os.environ.get("EXTRACTOR_WORKERS", "2"),
    )
    stack = Stack(root=state, env=env, ports=ports, key=key)
    for name in [*PIPELINE, "api"]:
        stack.start(name)
    try:
        await stack.wait_ready([*PIPELINE, "api"])
        t = time.perf_counter()
        task_id = await stack.start_import(work / "corpus")
        task = await stack.wait_task(task_id, timeout=1800)
        seconds = time.perf_counter() - t
        assert task["status"] == "completed", task
        counters = task["counters"]
        print(f"  task counters: { ({k: v for k, v in counters.items() if k != 'failures'}) }")
        result = rate("dicomflow end to end (import API)", files, seconds, total)
        print("\n  peak RSS per service (MB):")
        for name, proc in stack.procs.items():
            extra = children_rss_mb(proc.pid)
            note = f" (+{extra:.0f} in parser processes)" if extra else ""
            print(f"    {name:<16} {peak_rss_mb(proc.pid):>6.0f}{note}")
        return result
    finally:
        stack.stop_all()
        broker.terminate()
        broker.wait()
        await pool.close()
        conn2 = await asyncpg.connect(f"{PG}/postgres")
        await conn2.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn2.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=int(os.environ.get("BENCH_COUNT", 2000)))
    parser.add_argument("--work", type=Path, default=Path("var/bench"))
    args = parser.parse_args()
    work = args.work.absolute()
    files = corpus(work / "corpus", args.count)
    total = sum(f.stat().st_size for f in files)
    print(f"\ncorpus: {len(files)} instances, {total / 1e6:.0f} MB, on {os.cpu_count()} cores\n")
    print("reference tools on the same files:")
    ref = references(files, total)
    print("\npipeline:")
    got = asyncio.run(pipeline(work, files, total))
    print("\nratios (dicomflow end to end / reference):")
    for name, r in ref.items():
        print(f"  vs {name:<6} {got['inst_s'] / r['inst_s']:.2f}x")
    print(
        f"\ntarget: >= 500 inst/s and >= 250 MB/s; got {got['inst_s']:.0f} inst/s, "
        f"{got['mb_s']:.0f} MB/s"
    )


if __name__ == "__main__":
    main()
