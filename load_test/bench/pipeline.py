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
import httpx

from libs.db.apikeys import create_key
from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.dicom.synthetic import generate_corpus
from libs.tools.dev_broker import broker_argv, free_port, wait_for_port
from load_test.process_stack import PIPELINE, Stack, stack_env

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


def process_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command, CPU seconds so far) for every process on the machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, rest = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        fields = rest.split()
        table[int(stat.parent.name)] = (
            int(fields[1]),
            head.split("(", 1)[1],
            (int(fields[11]) + int(fields[12])) / ticks,
        )
    return table


def cpu_by_owner(stack: Stack, broker_pid: int) -> dict[str, float]:
    """CPU seconds so far, per service (with its children), broker, PostgreSQL and the rest."""
    table = process_table()
    roots = {p.pid: name for name, p in stack.procs.items()} | {broker_pid: "broker (tansu)"}
    roots[os.getpid()] = "bench (this script)"

    def owner(pid: int) -> str:
        seen = 0
        while pid in table and seen < 50:
            if pid in roots:
                return roots[pid]
            if table[pid][1] == "postgres":
                return "postgresql"
            pid, seen = table[pid][0], seen + 1
        return "other"

    out: dict[str, float] = {}
    for pid, (_, _, cpu) in table.items():
        key = owner(pid)
        out[key] = out.get(key, 0.0) + cpu
    return out


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


async def handled(stack: Stack, name: str, what: str = "messages_total") -> float:
    """Messages a stage has handled (or, for the watcher, emitted) so far, from its /metrics."""
    metric = f"dicomflow_{name.replace('-', '_')}_{what}"
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{stack.ports[name]}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric + "{")
    )


async def timeline(stack: Stack, total: int, t0: float, out: dict[str, list[float]]) -> None:
    """When each stage reached 25/50/75/100% of the files: shows where the work piles up."""
    stages = ["nas-watcher", "extractor", "dedup", "storage-writer", "indexer"]
    marks = [0.25, 0.5, 0.75, 1.0]
    while True:
        for name in stages:
            what = "events_produced_total" if name == "nas-watcher" else "messages_total"
            done = await handled(stack, name, what)
            reached = out.setdefault(name, [])
            while len(reached) < len(marks) and done >= marks[len(reached)] * total:
                reached.append(time.perf_counter() - t0)
        await asyncio.sleep(0.5)


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
        NAS_SCAN_BATCH_SIZE="500",
        KAFKA_TOPIC_PARTITIONS="6",
        LOG_LEVEL="WARNING",
        EXTRACTOR_WORKERS=os.environ.get("EXTRACTOR_WORKERS", "2"),
    )
    stack = Stack(root=state, env=env, ports=ports, key=key)
    for name in [*PIPELINE, "api"]:
        stack.start(name)
    try:
        await stack.wait_ready([*PIPELINE, "api"])
        cpu0 = cpu_by_owner(stack, broker.pid)
        t = time.perf_counter()
        task_id = await stack.start_import(work / "corpus")
        marks: dict[str, list[float]] = {}
        watcher = asyncio.create_task(timeline(stack, len(files), t, marks))
        task = await stack.wait_task(task_id, timeout=1800)
        seconds = time.perf_counter() - t
        watcher.cancel()
        assert task["status"] == "completed", task
        counters = task["counters"]
        print(f"  task counters: { ({k: v for k, v in counters.items() if k != 'failures'}) }")
        result = rate("dicomflow end to end (import API)", files, seconds, total)
        print("\n  seconds until each stage had handled 25% / 50% / 75% / 100% of the files:")
        for name, reached in marks.items():
            print(f"    {name:<16} " + " ".join(f"{x:>6.2f}" for x in reached))
        cpu1 = cpu_by_owner(stack, broker.pid)
        print("\n  peak RSS per service (MB):")
        for name, proc in stack.procs.items():
            extra = children_rss_mb(proc.pid)
            note = f" (+{extra:.0f} in parser processes)" if extra else ""
            print(f"    {name:<20} {peak_rss_mb(proc.pid):>6.0f}{note}")
        print(f"\n  CPU seconds during the import ({seconds:.1f}s wall x {os.cpu_count()} cores):")
        for name, cpu in sorted(cpu1.items(), key=lambda kv: -(kv[1] - cpu0.get(kv[0], 0))):
            used = cpu - cpu0.get(name, 0.0)
            if used >= 0.05:
                print(f"    {name:<20} {used:>6.2f}  ({1000 * used / len(files):.2f} ms/instance)")
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
