"""`make bench`: study archive build and cached download, against reference tools on the
same files in the same run.

1. Reuses (or generates) the pipeline bench's synthetic corpus (default 2,000 instances,
   ~1 GB) and lays it out as ONE study in a file:// store (hard links, no copies).
2. Reference: `tar -I 'zstd -3 -T0' -cf` of those files. Ours: the packager's build (read
   through the ObjectStore, SHA-256 of every member verified, TAR, python-zstandard
   multi-threaded at the same level). Prints both rates, the ratio and the output sizes.
3. Cached download over loopback: the packager's HTTP app (auth + audit on a fresh database)
   served by uvicorn, fetched by `curl -o /dev/null`, directly and through the API's relay
   (the API's app on its own port, as clients reach it); reference: `cat` of the archive.

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
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from libs.db.apikeys import create_key
from libs.db.archives import ArchiveInstance, ArchiveListing
from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.http.proxy import ProxyTimeouts, upstream_client
from libs.runtime.probes import Readiness, http_server
from libs.storage import instance_key, open_store
from libs.tools.dev_broker import free_port
from load_test.bench.pipeline import PG, corpus
from services.api.app import create_app as create_api
from services.packager.app import create_app
from services.packager.cache import ArchiveCache
from services.packager.packager import Encoding, Packager

STUDY = "2.25.424242"


def as_one_study(files: list[Path], store_root: Path) -> ArchiveListing:
    """Hard-link every file into a store as one study (a series per source folder)."""
    shutil.rmtree(store_root, ignore_errors=True)
    series: dict[Path, str] = {}
    rows: list[ArchiveInstance] = []
    now = datetime.now(UTC)
    for n, path in enumerate(files, start=1):
        series_uid = series.setdefault(path.parent, f"{STUDY}.{len(series) + 1}")
        sop = f"{series_uid}.{n}"
        target = store_root / instance_key(STUDY, series_uid, sop)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
        data = path.read_bytes()
        rows.append(
            ArchiveInstance(
                series_uid,
                len(series),
                "bench series",
                sop,
                n,
                len(data),
                hashlib.sha256(data).hexdigest(),
                now,
            )
        )
    return ArchiveListing(STUDY, "Bench^Patient", now.date(), rows)


def line(label: str, size: int, seconds: float, extra: str = "") -> float:
    rate = size / seconds / 1e6
    print(f"  {label:<44} {rate:>8.0f} MB/s  ({seconds:.2f}s) {extra}")
    return rate


def reference_build(store_root: Path, out: Path, total: int) -> float:
    t = time.perf_counter()
    subprocess.run(
        ["tar", "-I", "zstd -3 -T0", "-cf", str(out), "-C", str(store_root), "studies"],
        check=True,
    )
    seconds = time.perf_counter() - t
    return line(
        "tar -I 'zstd -3 -T0' (reference)", total, seconds, f"-> {out.stat().st_size / 1e6:.0f} MB"
    )


async def curl_download(url: str, key: str) -> tuple[int, float]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
        "-H", f"Authorization: Bearer {key}", url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    size, seconds = out.split()
    return int(size), float(seconds)


def rss_mb() -> float:
    for text in Path("/proc/self/status").read_text().splitlines():
        if text.startswith("VmRSS:"):
            return int(text.split()[1]) / 1024
    return 0.0


async def bench(work: Path, files: list[Path], level: int, threads: int) -> None:
    total = sum(f.stat().st_size for f in files)
    store_root = work / "archive-store"
    listing = as_one_study(files, store_root)
    print(f"one study: {len(files)} instances, {total / 1e6:.0f} MB")
    print("build")
    ref = reference_build(store_root, work / "reference.tar.zst", total)

    name = f"dicomflow_bench_{uuid.uuid4().hex[:8]}"
    pool = await create_pool(f"{PG}/{name}", size=4)
    try:
        await migrate(pool)
        cache_dir = work / "archive-cache"
        shutil.rmtree(cache_dir, ignore_errors=True)
        cache = ArchiveCache(cache_dir, 1 << 40)
        cache.prepare()

        async def listings(study: str, series: str | None) -> ArchiveListing | None:
            return listing

        async def publish(*_: object) -> None:
            return None

        packager = Packager(
            store=open_store(store_root.as_uri()),
            cache=cache,
            listings=listings,
            publish=publish,
            encoding=Encoding(level, threads),
        )
        plan = await packager.plan(STUDY, None, "tar.zst")
        assert plan is not None
        t = time.perf_counter()
        path = await packager.ensure(plan)
        ours = line(
            f"packager build (zstd {level}, threads {threads})",
            total,
            time.perf_counter() - t,
            f"-> {path.stat().st_size / 1e6:.0f} MB",
        )
        print(f"  ratio packager / reference: {ours / ref:.2f}x")
        # Synthetic pixels compress far better than real ones: the ZIP (stored) is the
        # full-size file for the download figures.
        zplan = await packager.plan(STUDY, None, "zip")
        assert zplan is not None
        t = time.perf_counter()
        zpath = await packager.ensure(zplan)
        line("packager build, zip (stored)", total, time.perf_counter() - t)

        print("cached download over loopback")
        t = time.perf_counter()
        subprocess.run(["cat", str(zpath)], stdout=subprocess.DEVNULL, check=True)
        line("cat of the zip (reference)", zpath.stat().st_size, time.perf_counter() - t)
        async with pool.acquire() as conn:
            _, key = await create_key(conn, "clinician", "bench")
        port = free_port()
        server = http_server(
            create_app(pool, packager, CollectorRegistry(), Readiness()), "127.0.0.1", port
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        rss_before = rss_mb()
        url = f"http://127.0.0.1:{port}/v1/studies/{STUDY}/archive?format=zip"
        best = 0.0
        for _ in range(3):
            size, seconds = await curl_download(url, key)
            assert size == zpath.stat().st_size
            best = max(best, line("packager GET zip (curl -o /dev/null)", size, seconds) / 1000)
        print(f"  best {best:.2f} GB/s; server RSS {rss_before:.0f} -> {rss_mb():.0f} MB")
        await relayed_download(pool, port, key, zpath.stat().st_size)
        server.should_exit = True
        await task
    finally:
        await pool.close()
        import asyncpg

        conn = await asyncpg.connect(f"{PG}/postgres")
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def relayed_download(pool: object, packager_port: int, key: str, size: int) -> None:
    """The same archive on the API's origin: API app -> httpx relay -> packager app."""

    async def publish(*_: object) -> None:
        return None

    relay = upstream_client(f"http://127.0.0.1:{packager_port}", ProxyTimeouts())
    port = free_port()
    api = create_api(pool, publish, CollectorRegistry(), Readiness(), packager=relay)  # type: ignore[arg-type]
    server = http_server(api, "127.0.0.1", port)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    rss_before = rss_mb()
    url = f"http://127.0.0.1:{port}/v1/studies/{STUDY}/archive?format=zip"
    best = 0.0
    for _ in range(3):
        got, seconds = await curl_download(url, key)
        assert got == size
        best = max(best, line("API relay GET zip (curl -o /dev/null)", got, seconds) / 1000)
    print(f"  best {best:.2f} GB/s; both servers' RSS {rss_before:.0f} -> {rss_mb():.0f} MB")
    server.should_exit = True
    await task
    await relay.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=int(os.environ.get("BENCH_COUNT", 2000)))
    parser.add_argument("--work", type=Path, default=Path("var/bench"))
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--threads", type=int, default=-1)
    args = parser.parse_args()
    for tool in ("tar", "zstd", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: run deploy/dev/system-deps.sh")
    files = corpus(args.work / "corpus", args.count)
    asyncio.run(bench(args.work.absolute(), files, args.level, args.threads))


if __name__ == "__main__":
    main()
