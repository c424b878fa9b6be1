"""`make bench` (first): what a user gets. The default stack exactly as `dicomflow up` starts
it (every default service, default settings and log level, the embedded broker), a fresh
database, `POST /v1/imports` of a synthetic corpus timed until the task is `completed`;
then Debian's Orthanc ingesting the same files over its REST API (4 concurrent clients
POSTing /instances), in the same run.

Printed: instances/s of both and their ratio, CPU ms/instance per process (from
/proc/<pid>/stat utime+stime before and after, children included: parser and render
workers; PostgreSQL backends of the bench's database; the broker; `dicomflow up` itself),
peak RSS per service, and the load average beside every figure (the machine may be
shared: compare A/B runs made in the same conditions).

    python -m load_test.bench.ingest --count 2000      # default corpus: 2,000 CT/MR, ~1 GB

Three rounds by default (`--rounds`, `BENCH_ROUNDS`), dicomflow and Orthanc alternated: each
round is printed, then the medians and ranges (the rate, the CPU, the per-round ratio).

Only loopback ports chosen free for this run; everything started is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from libs.tools.dev_broker import free_port
from libs.tools.devstack import SERVICES, configured
from load_test.bench.pipeline import corpus
from load_test.peers import Orthanc
from load_test.process_stack import PREFIX

PG = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
TICKS = os.sysconf("SC_CLK_TCK")
RESULTS = Path(__file__).resolve().parent.parent / "results"
# Settings a user's shell might carry that would make the stack differ from the default.
CLEARED = (
    "KAFKA_",
    "STORAGE_URL",
    "NAS_",
    "EXTRACTOR_",
    "DEDUP_",
    "STORAGE_WRITER_",
    "INDEXER_",
    "JPG_CONVERTER_",
    "LOG_LEVEL",
    "DATABASE_URL",
    "PACKAGER_",
    "RECEIVER_",
)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


@dataclass
class Proc:
    pid: int
    ppid: int
    comm: str
    cmdline: str
    cpu: float  # seconds, utime + stime
    sys: float  # seconds, stime (the kernel's share: reads, writes, syncs, page cache)


def processes() -> dict[int, Proc]:
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, rest = stat.read_text().rsplit(")", 1)
            cmd = (
                (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue
        f = rest.split()
        pid = int(stat.parent.name)
        out[pid] = Proc(
            pid,
            int(f[1]),
            head.split("(", 1)[1],
            cmd,
            (int(f[11]) + int(f[12])) / TICKS,
            int(f[12]) / TICKS,
        )
    return out


def owner_of(p: Proc, table: dict[int, Proc], root: int, db: str) -> str | None:
    """Which part of the stack a process belongs to (None: not ours)."""
    if p.comm.startswith("postgres") and f" {db} " in p.cmdline:
        return "postgresql (backends)"
    chain, cur = [], p
    for _ in range(30):
        chain.append(cur)
        if cur.pid == root:
            break
        nxt = table.get(cur.ppid)
        if nxt is None:
            return None
        cur = nxt
    else:
        return None
    if cur.pid != root:
        return None
    if len(chain) == 1:
        return "dicomflow up (supervisor)"
    top = chain[-2]  # the supervisor's child
    name = next((n for n, m in SERVICES.items() if f"-m {m} " in top.cmdline + " "), None)
    if name is None:
        return "broker (tansu)" if "broker" in top.cmdline else top.comm
    return name if len(chain) == 2 else f"{name} (workers)"


def cpu_by_owner(root: int, db: str) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds and peak RSS (MB) per part of the stack; the kernel's share of each part's
    CPU under `<part> [sys]`."""
    table = processes()
    cpu: dict[str, float] = {}
    rss: dict[str, float] = {}
    for p in table.values():
        who = owner_of(p, table, root, db)
        if who is None:
            continue
        cpu[who] = cpu.get(who, 0.0) + p.cpu
        cpu[f"{who} [sys]"] = cpu.get(f"{who} [sys]", 0.0) + p.sys
        rss[who] = rss.get(who, 0.0) + peak_rss_mb(p.pid)
    return cpu, rss


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Up:
    """`dicomflow up` in a fresh state folder, on free loopback ports and a fresh database."""

    var: Path
    db: str
    corpus: Path
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(CLEARED)}
        empty = self.var / "nas-empty"
        empty.mkdir(parents=True, exist_ok=True)
        self.ports = {n: free_port() for n in PREFIX} | {"api": free_port(), "broker": free_port()}
        env |= {f"{p}OPS_PORT": str(self.ports[n]) for n, p in PREFIX.items()}
        env |= {
            "DATABASE_URL": f"{PG}/{self.db}",
            "DICOMFLOW_BROKER_PORT": str(self.ports["broker"]),
            "API_PORT": str(self.ports["api"]),
            "RECEIVER_PORT": str(free_port()),
            "NAS_ROOTS": str(empty),  # no demo seed: the corpus is the only work
            "NAS_IMPORT_ROOTS": str(self.corpus),
            "PYTHONUNBUFFERED": "1",
        }
        return env

    def start(self) -> None:
        self.var.mkdir(parents=True, exist_ok=True)
        log = (self.var / "up.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "libs.tools.cli", "up", "--var", str(self.var)],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def services(self) -> list[str]:
        return [n for n in SERVICES if configured(n, self.env_snapshot)]

    @property
    def env_snapshot(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith(CLEARED)}

    async def wait_ready(self, timeout: float = 180.0) -> str:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        key_file = self.var / "admin-key"
        pending = [n for n in self.services() if n in self.ports or n == "api"]
        async with httpx.AsyncClient() as client:
            while pending:
                if self.process.poll() is not None:
                    raise RuntimeError(f"dicomflow up exited: see {self.var / 'up.log'}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not ready after {timeout}s: {pending}")
                name = pending[0]
                try:
                    url = f"http://127.0.0.1:{self.ports[name]}/ready"
                    if (await client.get(url, timeout=2)).status_code == 200:
                        pending.pop(0)
                        continue
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.3)
        return key_file.read_text().strip()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


async def metric(client: httpx.AsyncClient, port: int, name: str) -> float:
    text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(name + "{"))


def report_cpu(title: str, before: dict[str, float], after: dict[str, float], n: int) -> float:
    print(f"  {title} (of which in the kernel)")
    total = 0.0
    parts = [k for k in after if not k.endswith(" [sys]")]
    for name in sorted(parts, key=lambda k: -(after[k] - before.get(k, 0.0))):
        used = after[name] - before.get(name, 0.0)
        sys_ = after.get(f"{name} [sys]", 0.0) - before.get(f"{name} [sys]", 0.0)
        total += used
        if used >= 0.005:
            print(f"    {name:<28} {1000 * used / n:>7.2f} ms/instance ({1000 * sys_ / n:.2f})")
    print(f"    {'total':<28} {1000 * total / n:>7.2f} ms/instance")
    return 1000 * total / n


async def bench_dicomflow(work: Path, files: list[Path], var: Path) -> dict[str, Any]:
    """One import into a fresh stack whose state lives in `var` (left for the caller to
    remove: see `main`)."""
    db = f"dicomflow_bench_{uuid.uuid4().hex[:8]}"
    up = Up(var=var, db=db, corpus=work / "corpus")
    up.start()
    assert up.process is not None
    try:
        key = await up.wait_ready()
        await asyncio.sleep(2)  # let start-up work (topic creation, first rounds) settle
        cpu0, _ = cpu_by_owner(up.process.pid, db)
        load0 = load()
        headers = {"Authorization": f"Bearer {key}"}
        api = f"http://127.0.0.1:{up.ports['api']}"
        async with httpx.AsyncClient(base_url=api, headers=headers, timeout=30) as c:
            t = time.perf_counter()
            r = await c.post("/v1/imports", json={"source_path": str(up.corpus)})
            assert r.status_code == 202, r.text
            task_id = r.json()["task_id"]
            while True:
                body = (await c.get(f"/v1/imports/{task_id}")).json()
                if body["status"] in ("completed", "failed"):
                    break
                if time.perf_counter() - t > 3600:
                    raise RuntimeError(f"import not finished after an hour: {body}")
                await asyncio.sleep(0.2)
            seconds = time.perf_counter() - t
        cpu1, rss = cpu_by_owner(up.process.pid, db)
        load1 = load()
        counters = {k: v for k, v in body["counters"].items() if k != "failures"}
        n = len(files)
        print(f"  task {body['status']}: {counters}")
        print(
            f"  dicomflow (import API to completed): {n / seconds:.0f} instances/s "
            f"({seconds:.1f}s; {load0} -> {load1})"
        )
        cpu_ms = report_cpu("CPU until completed:", cpu0, cpu1, n)
        previews_s = await wait_previews(up, n, t, seconds)
        cpu2, rss = cpu_by_owner(up.process.pid, db)
        report_cpu("CPU until previews done (all of it):", cpu0, cpu2, n)
        print("  peak RSS (MB):")
        for name in sorted(rss):
            print(f"    {name:<28} {rss[name]:>7.0f}")
        return {
            "inst_s": n / seconds,
            "seconds": seconds,
            "cpu_ms": cpu_ms,
            "status": body["status"],
            "counters": counters,
            "load": [load0, load1],
            "previews_after_s": previews_s,
            "cpu_ms_by_process": {k: 1000 * (cpu1[k] - cpu0.get(k, 0)) / n for k in cpu1},
        }
    finally:
        up.stop()
        conn = await asyncpg.connect(f"{PG}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        finally:
            await conn.close()
        with contextlib.suppress(OSError):  # the stack's log, for a look at batch sizes
            shutil.copyfile(var / "up.log", work / "up-last.log")


async def wait_previews(up: Up, n: int, t0: float, done_at: float) -> float | None:
    """Seconds after `completed` until the jpg-converter had an outcome for every instance."""
    port = up.ports["jpg-converter"]
    async with httpx.AsyncClient() as client:
        while time.perf_counter() - t0 < done_at + 300:
            handled = await metric(client, port, "dicomflow_jpg_converter_messages_total")
            if handled >= n:
                after = time.perf_counter() - t0 - done_at
                print(f"  previews: every stored instance handled {after:.1f}s after completed")
                return after
            await asyncio.sleep(0.5)
    print("  previews: not finished 300 s after completed")
    return None


async def upload(orthanc: Orthanc, files: list[Path], clients: int = 4) -> float:
    """POST every file to Orthanc's REST API with `clients` concurrent clients; seconds."""
    queue: asyncio.Queue[Path] = asyncio.Queue()
    for f in files:
        queue.put_nowait(f)

    async def client(c: httpx.AsyncClient) -> None:
        while not queue.empty():
            path = queue.get_nowait()
            r = await c.post("/instances", content=await asyncio.to_thread(path.read_bytes))
            r.raise_for_status()

    t = time.perf_counter()
    async with httpx.AsyncClient(base_url=orthanc.url, auth=orthanc.auth, timeout=120) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    return time.perf_counter() - t


async def bench_orthanc(
    work: Path, files: list[Path], root: Path, clients: int = 4
) -> dict[str, Any]:
    """Orthanc's REST ingest of `files` with its storage in `root` (left for the caller)."""
    root.mkdir(parents=True)
    orthanc = Orthanc(root=root)
    orthanc.start()
    assert orthanc.process is not None
    try:
        before = processes()[orthanc.process.pid].cpu
        load0 = load()
        seconds = await upload(orthanc, files, clients)
        cpu = processes()[orthanc.process.pid].cpu - before
        rss = peak_rss_mb(orthanc.process.pid)
        n = len(files)
        print(
            f"  Orthanc REST ({clients} clients): {n / seconds:.0f} instances/s ({seconds:.1f}s; "
            f"{load0} -> {load()}); CPU {1000 * cpu / n:.2f} ms/instance; peak RSS {rss:.0f} MB"
        )
        return {"inst_s": n / seconds, "seconds": seconds, "cpu_ms": 1000 * cpu / n}
    finally:
        orthanc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=int(os.environ.get("BENCH_COUNT", 2000)))
    parser.add_argument("--work", type=Path, default=Path("var/bench"))
    parser.add_argument("--no-orthanc", action="store_true", help="skip the reference run")
    parser.add_argument(
        "--rounds",
        type=int,
        default=int(os.environ.get("BENCH_ROUNDS", 3)),
        help="dicomflow and Orthanc alternated this many times; medians are the result",
    )
    args = parser.parse_args()
    work = args.work.absolute()
    files = corpus(work / "corpus", args.count)
    size = sum(f.stat().st_size for f in files)
    print(
        f"\ncorpus: {len(files)} instances, {size / 1e6:.0f} MB, {os.cpu_count()} cores, {load()}"
    )
    rounds: list[dict[str, Any]] = []
    # Every round's stored files (ours and Orthanc's) are removed only after the last round:
    # on ext4 without a journal (this VM's root) a file created within a minute or more of
    # many deletions scans past each freed inode (`recently_deleted`), which made each round
    # pay for the one before it; no import a user runs follows such a mass delete.
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)  # left by an interrupted bench
    shutil.rmtree(work / "state", ignore_errors=True)  # the layout before rounds
    try:
        for n in range(1, max(1, args.rounds) + 1):
            print(f"\nround {n} of {args.rounds}: dicomflow up (default stack):")
            ours = asyncio.run(bench_dicomflow(work, files, runs / f"dicomflow-{n}"))
            ref = None
            if not args.no_orthanc:
                print("\nreference, same files:")
                ref = asyncio.run(bench_orthanc(work, files, runs / f"orthanc-{n}"))
                print(
                    f"\nratio dicomflow / Orthanc: {ours['inst_s'] / ref['inst_s']:.2f}x "
                    f"instances/s, {ours['cpu_ms'] / ref['cpu_ms']:.2f}x CPU per instance"
                )
            rounds.append({"dicomflow": ours, "orthanc": ref})
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    print(summary(rounds))
    RESULTS.mkdir(exist_ok=True)
    middle = sorted(rounds, key=lambda r: float(r["dicomflow"]["inst_s"]))[len(rounds) // 2]
    out = {
        "count": len(files),
        "cpus": os.cpu_count(),
        "dicomflow": middle["dicomflow"],  # the median round by rate
        "orthanc": middle["orthanc"],
        "rounds": rounds,
    }
    (RESULTS / "ingest-latest.json").write_text(json.dumps(out, indent=2) + "\n")


def summary(rounds: list[dict[str, Any]]) -> str:
    """Medians (and ranges) over the rounds: one run on a VM swings by a third."""

    def spread(values: list[float], fmt: str) -> str:
        ordered = sorted(values)
        mid = (
            ordered[len(ordered) // 2]
            if len(ordered) % 2
            else ((ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2)
        )
        return f"{mid:{fmt}} ({ordered[0]:{fmt}}-{ordered[-1]:{fmt}})"

    ours = [r["dicomflow"] for r in rounds]
    lines = [f"\nover {len(rounds)} round(s), median (range):"]
    lines.append(
        f"  dicomflow  {spread([o['inst_s'] for o in ours], '.0f')} instances/s, "
        f"{spread([o['cpu_ms'] for o in ours], '.2f')} ms CPU/instance"
    )
    refs = [r["orthanc"] for r in rounds if r["orthanc"]]
    if refs:
        lines.append(
            f"  Orthanc    {spread([r['inst_s'] for r in refs], '.0f')} instances/s, "
            f"{spread([r['cpu_ms'] for r in refs], '.2f')} ms CPU/instance"
        )
        ratios = [r["dicomflow"]["inst_s"] / r["orthanc"]["inst_s"] for r in rounds]
        lines.append(f"  ratio      {spread(ratios, '.2f')}x Orthanc's rate (per round)")
    rate = sorted(o["inst_s"] for o in ours)[len(ours) // 2]
    cpu = sorted(o["cpu_ms"] for o in ours)[len(ours) // 2]
    lines.append(
        f"target: >= 500 instances/s, >= 2.0x Orthanc, <= 4 ms CPU/instance; got "
        f"{rate:.0f}/s, {cpu:.1f} ms (medians; {load()})"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
