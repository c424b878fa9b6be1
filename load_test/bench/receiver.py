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
4. the default stack as `dicomflow up` starts it (every default service, default settings):
   acknowledged, and until every instance is indexed (the stack shares the 2 cores).
Prints each rate and its ratio to storescp, the CPU ms/instance of each receiving process
(from /proc/<pid>/stat: utime+stime, storescp's forked children included; for dicomflow the
receiver, the broker and the database's PostgreSQL backends, and with the pipeline every
stage), the peak RSS of the receiving processes, and the load average beside each figure;
writes them to load_test/results/receiver-latest.json. Three rounds by default (`--rounds`,
`BENCH_DIMSE_ROUNDS`), storescp measured beside ours in each, then medians and ranges.

    python -m load_test.bench.receiver --count 600 --parallel 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.tools.dev_broker import broker_argv, free_port, wait_for_port
from load_test.bench.ingest import RESULTS, Up, cpu_by_owner, load, peak_rss_mb
from load_test.bench.pipeline import PG, corpus
from load_test.dimse import StoreSCP, storescu_argv
from load_test.peers import PEER_ENV
from load_test.process_stack import Stack, stack_env

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


TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid`, of its children already reaped, and of its children still in
    /proc (running or exited and not yet reaped: a zombie keeps its times)."""
    own = stat_fields(pid)
    if own is None:
        return 0.0
    total = sum(int(own[i]) for i in (11, 12, 13, 14))
    for stat in Path("/proc").glob("[0-9]*/stat"):
        f = stat_fields(int(stat.parent.name))
        if f is not None and int(f[1]) == pid:
            total += int(f[11]) + int(f[12])
    return total / TICKS


def backends_cpu(db: str) -> float:
    """CPU seconds of the PostgreSQL backends serving `db` (and their children)."""
    total = 0.0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f" {db} ".encode() in cmdline.read_bytes().replace(b"\0", b" "):
                total += tree_cpu(int(cmdline.parent.name))
        except OSError:
            continue
    return total


@dataclass
class Figures:
    rate: float
    cpu_ms: dict[str, float] = field(default_factory=dict)  # per process, per instance
    rss_mb: dict[str, float] = field(default_factory=dict)
    load: str = ""
    extra: dict[str, float] = field(default_factory=dict)


def storescp_rate(work: Path, files: list[Path], parallel: int) -> Figures:
    out = work / "storescp"
    shutil.rmtree(out, ignore_errors=True)
    scp = StoreSCP(out, fork=parallel > 1)
    scp.start()
    assert scp.process is not None
    try:
        wait_for_port("127.0.0.1", scp.port)
        before = tree_cpu(scp.process.pid)
        seconds = send(scp.port, scp.aet, files, parallel)
        time.sleep(0.3)  # the forked children end after their release
        cpu = tree_cpu(scp.process.pid) - before
        rss = peak_rss_mb(scp.process.pid)
    finally:
        scp.stop()
    written = sum(1 for _ in out.rglob("*") if _.is_file())
    assert written == len(files), f"storescp wrote {written} of {len(files)}"
    n = len(files)
    return Figures(n / seconds, {"storescp": 1000 * cpu / n}, {"storescp (parent)": rss}, load())


def pynetdicom_rate(work: Path, files: list[Path], parallel: int) -> Figures:
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
    return Figures(len(files) / seconds, load=load())


@asynccontextmanager
async def receiver_stack(
    work: Path, *, fsync: bool = True
) -> AsyncIterator[tuple[Stack, asyncpg.Pool, int, Probe]]:
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
    names = [RECEIVER]
    for name in names:
        stack.start(name)
    try:
        await stack.wait_ready(names)
        yield stack, pool, dport, Probe(stack, broker.pid, db)
    finally:
        stack.stop_all()
        broker.terminate()
        broker.wait()
        await pool.close()
        await drop_database(db)


async def until_indexed(pool: asyncpg.Pool, total: int, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    sql = "SELECT count(*) FROM ingest_files WHERE status <> 'pending'"
    while await pool.fetchval(sql) < total:
        if time.monotonic() > deadline:
            raise RuntimeError("not all received instances were indexed in time")
        await asyncio.sleep(0.1)


@dataclass
class Probe:
    """CPU and peak RSS of what one receiver stack runs."""

    stack: Stack
    broker: int
    db: str

    def cpu(self) -> dict[str, float]:
        out = {name: tree_cpu(p.pid) for name, p in self.stack.procs.items()}
        return out | {"broker (tansu)": tree_cpu(self.broker), "postgresql": backends_cpu(self.db)}

    def rss(self) -> dict[str, float]:
        return {name: peak_rss_mb(p.pid) for name, p in self.stack.procs.items()}


def per_instance(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {k: 1000 * (after[k] - before.get(k, 0.0)) / n for k in after}


async def store_seconds(stack: Stack) -> float:
    """Mean C-STORE handling time (fsync, ledger, Kafka acknowledgement), from /metrics."""
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"http://127.0.0.1:{stack.ports[RECEIVER]}/metrics")).text
    names = ("_sum", "_count")
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith(tuple(f"dicomflow_dicom_receiver_store_seconds{n} " for n in names))
    }
    count = values.get("dicomflow_dicom_receiver_store_seconds_count", 0.0)
    return values.get("dicomflow_dicom_receiver_store_seconds_sum", 0.0) / count if count else 0


async def receiver_rates(work: Path, files: list[Path], parallel: int) -> dict[str, Figures]:
    """Each round on a fresh stack: the receiver alone (fsync on, off), then with the
    pipeline (acknowledged, indexed)."""
    out = {}
    n = len(files)
    for label, fsync in (("alone", True), ("alone, no fsync", False)):
        async with receiver_stack(work, fsync=fsync) as (stack, _, port, probe):
            cpu0 = probe.cpu()
            seconds = await asyncio.to_thread(send, port, "DICOMFLOW", files, parallel)
            out[label] = Figures(
                n / seconds,
                per_instance(cpu0, probe.cpu(), n),
                probe.rss(),
                load(),
                {"store_ms": 1000 * await store_seconds(stack)},
            )
    out["with pipeline"], out["indexed"] = await default_stack_rates(work, files, parallel)
    return out


@dataclass
class UpWithReceiver(Up):
    """`dicomflow up` (every default service, default settings) with a known DICOM port."""

    receiver_port: int = 0

    def env(self) -> dict[str, str]:
        return super().env() | {"RECEIVER_PORT": str(self.receiver_port)}


async def default_stack_rates(
    work: Path, files: list[Path], parallel: int
) -> tuple[Figures, Figures]:
    """storescu into the default stack as `dicomflow up` starts it: acknowledged, and until
    every instance is indexed."""
    db = f"dicomflow_bench_{uuid.uuid4().hex[:8]}"
    var = work / "receiver-up"
    shutil.rmtree(var, ignore_errors=True)
    up = UpWithReceiver(var=var, db=db, corpus=work / "dimse-corpus", receiver_port=free_port())
    up.start()
    assert up.process is not None
    n = len(files)
    try:
        await up.wait_ready()
        await asyncio.sleep(2)  # start-up rounds settle
        pool = await create_pool(f"{PG}/{db}", size=1)
        try:
            cpu0, _ = cpu_by_owner(up.process.pid, db)
            t = time.perf_counter()
            acked = await asyncio.to_thread(send, up.receiver_port, "DICOMFLOW", files, parallel)
            acked_load = load()
            await until_indexed(pool, n)
            seconds = time.perf_counter() - t
            cpu1, rss = cpu_by_owner(up.process.pid, db)
        finally:
            await pool.close()
        every = per_instance(cpu0, cpu1, n)  # "<part> [sys]": the kernel's share, counted in <part>
        cpu = {k: v for k, v in every.items() if not k.endswith(" [sys]")}
        return Figures(n / acked, load=acked_load), Figures(n / seconds, cpu, rss, load())
    finally:
        up.stop()
        await drop_database(db)
        shutil.rmtree(var, ignore_errors=True)


async def drop_database(db: str) -> None:
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    finally:
        await conn.close()


def show(label: str, f: Figures, ref: float) -> None:
    cpu = sum(f.cpu_ms.values())
    cpu_text = f"{cpu:6.2f} ms CPU/inst" if f.cpu_ms else " " * 18
    print(f"    {label:<40} {f.rate:>6.0f} inst/s  {f.rate / ref:5.2f}x  {cpu_text}  ({f.load})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=int(os.environ.get("BENCH_DIMSE_COUNT", 600)))
    parser.add_argument("--parallel", default="4", help="associations, comma-separated: 1,4")
    parser.add_argument("--work", type=Path, default=Path("var/bench"))
    parser.add_argument(
        "--rounds",
        type=int,
        default=int(os.environ.get("BENCH_DIMSE_ROUNDS", 3)),
        help="each measurement repeated this many times, storescp beside ours in every round; "
        "medians are the result",
    )
    args = parser.parse_args()
    work = args.work.absolute()
    files = corpus(work / "dimse-corpus", args.count)
    total = sum(f.stat().st_size for f in files)
    print(f"\nC-STORE: {len(files)} instances, {total / 1e6:.0f} MB, on {os.cpu_count()} cores")
    results: dict[str, Any] = {"count": len(files), "mb": total / 1e6, "cpus": os.cpu_count()}
    for parallel in (int(p) for p in args.parallel.split(",")):
        rounds = []
        for n in range(1, max(1, args.rounds) + 1):
            print(f"\n  round {n} of {args.rounds}:")
            rounds.append(one_round(work, files, parallel))
        summarise(rounds)
        results[f"{parallel}"] = {k.strip(): asdict(v) for k, v in rounds[-1].items()}
        results[f"{parallel}"]["rounds"] = [
            {k.strip(): asdict(v) for k, v in r.items()} for r in rounds
        ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "receiver-latest.json").write_text(json.dumps(results, indent=2) + "\n")


ALONE, INDEXED = "dicomflow receiver alone (acked)", "dicomflow + pipeline (indexed)"
STORESCP, STORESCP_AGAIN = "DCMTK storescp (receive + write)", "DCMTK storescp again, after"


def one_round(work: Path, files: list[Path], parallel: int) -> dict[str, Figures]:
    """storescp, ours (alone, without fsync, with the pipeline), storescp again, pynetdicom;
    printed as a table with ratios to the first storescp run."""
    ref = storescp_rate(work, files, parallel)
    ours = asyncio.run(receiver_rates(work, files, parallel))
    ref_again = storescp_rate(work, files, parallel)  # the load may have changed
    plain = pynetdicom_rate(work, files, parallel)
    rows = {
        STORESCP: ref,
        "pynetdicom SCP (raw write, no fsync)": plain,
        ALONE: ours["alone"],
        "  same, RECEIVER_FSYNC=false": ours["alone, no fsync"],
        "dicomflow + pipeline (acked)": ours["with pipeline"],
        INDEXED: ours["indexed"],
        STORESCP_AGAIN: ref_again,
    }
    print(f"  {parallel} association(s), TCP_NODELAY on both sides; ratios to storescp:")
    for label, f in rows.items():
        show(label, f, ref.rate)
    alone = ours["alone"]
    print(
        "    CPU ms/instance, receiver alone (acked): "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(alone.cpu_ms.items(), key=lambda kv: -kv[1]))
    )
    print(f"    mean C-STORE handling (fsync, ledger, Kafka ack): {alone.extra['store_ms']:.1f} ms")
    print(
        "    CPU ms/instance to indexed: "
        + ", ".join(
            f"{k} {v:.2f}"
            for k, v in sorted(ours["indexed"].cpu_ms.items(), key=lambda kv: -kv[1])
            if v >= 0.005
        )
    )
    print(
        "    peak RSS (MB): "
        + ", ".join(f"{k} {v:.0f}" for k, v in {**ref.rss_mb, **ours["indexed"].rss_mb}.items())
    )
    slower = min(ref.rate, ref_again.rate)
    print(
        f"    receiver alone / storescp: {alone.rate / ref.rate:.2f}x "
        f"({alone.rate / slower:.2f}x against the slower storescp run; target >= 0.5x); "
        f"indexed {ours['indexed'].rate:.0f}/s (target >= 300/s)"
    )
    return rows


def summarise(rounds: list[dict[str, Figures]]) -> None:
    """Medians and ranges over the rounds: storescp alone swings by 2x between runs here."""

    def spread(values: list[float], fmt: str) -> str:
        ordered = sorted(values)
        return f"{statistics.median(ordered):{fmt}} ({ordered[0]:{fmt}}-{ordered[-1]:{fmt}})"

    ratios = [r[ALONE].rate / r[STORESCP].rate for r in rounds]
    slower = [r[ALONE].rate / min(r[STORESCP].rate, r[STORESCP_AGAIN].rate) for r in rounds]
    print(f"\n  over {len(rounds)} round(s), median (range):")
    print(f"    DCMTK storescp            {spread([r[STORESCP].rate for r in rounds], '.0f')}/s")
    print(f"    receiver alone (acked)    {spread([r[ALONE].rate for r in rounds], '.0f')}/s")
    print(
        f"    receiver alone / storescp {spread(ratios, '.2f')}x (per round; against the "
        f"slower storescp run {spread(slower, '.2f')}x; target >= 0.5x)"
    )
    print(
        f"    default stack, indexed    {spread([r[INDEXED].rate for r in rounds], '.0f')}/s "
        f"(target >= 300/s), "
        f"{spread([sum(r[INDEXED].cpu_ms.values()) for r in rounds], '.2f')} ms CPU/inst"
    )


if __name__ == "__main__":
    main()
