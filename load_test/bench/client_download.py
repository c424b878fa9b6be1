"""`make bench`: the clients' download rate (dicomflow_client, shared by the desktop client
and `dicomflow fetch`) against `curl` on the same archive in the same run, through the API's
origin as clinicians reach it.

The stack as deployed, each in its own process on loopback: the packager's HTTP app (auth +
audit on a fresh database, the archives built into its cache beforehand) and the API in
front of it (`load_test.bench.relay_server`: the API's app relaying
`/v1/studies/{uid}/archive` to the packager, libs/http/proxy.py). The corpus is the pipeline
bench's synthetic generator at 2,500 instances (~1.1 GB, its own folder so the pipeline
bench's 2,000 are not regenerated) laid out as ONE study; the bench refuses a study under
1 GB unless `--min-mb` says otherwise.

For the ZIP (stored: full size) and the tar.zst: `curl -o FILE` (reference) and the client's
resumable download to a file, both on the API's origin, best of `--rounds`, and their ratio;
curl straight from the packager once per round shows what the relay costs. Then the
client's verification + unpack (SHA-256 of every file against the manifest, into the study
folder) and the whole `fetch_study`. The summary goes to
`load_test/results/client-download-<UTC date>.md` with the load average.

Not a test: figures vary with the machine; the ratios are what to compare across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
from dicomflow_client import Client, Patient, Study, fetch_study
from dicomflow_client.download import download
from dicomflow_client.unpack import unpack
from prometheus_client import CollectorRegistry

from libs.db.apikeys import create_key
from libs.db.archives import ArchiveListing
from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.runtime.probes import Readiness, http_server
from libs.storage import open_store
from libs.tools.dev_broker import free_port, wait_for_port
from load_test.bench.archive import STUDY, as_one_study, line
from load_test.bench.pipeline import PG, corpus
from services.packager.app import create_app
from services.packager.cache import ArchiveCache
from services.packager.packager import Encoding, Packager

FORMATS = ("zip", "tar.zst")


class Report:
    """What the bench prints, kept for the results file."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, text: str) -> None:
        print(text)
        self.lines.append(text)

    def rate(self, label: str, size: int, seconds: float) -> float:
        mb_s = size / seconds / 1e6
        self.lines.append(f"  {label:<44} {mb_s:>8.0f} MB/s  ({seconds:.2f}s)")
        return line(label, size, seconds)


def packager_for(store_root: Path, cache_root: Path, listing: ArchiveListing) -> Packager:
    async def listings(study: str, series: str | None) -> ArchiveListing:
        return listing

    async def publish(*_: object) -> None:
        return None

    cache = ArchiveCache(cache_root, 1 << 40)
    cache.prepare()  # keeps what this boot built: the archives the parent made
    return Packager(
        store=open_store(store_root.as_uri()),
        cache=cache,
        listings=listings,
        publish=publish,
        encoding=Encoding(3, -1),
    )


async def _serve_packager(
    port: int, db_url: str, store_root: Path, cache_root: Path, listing: ArchiveListing
) -> None:
    pool = await create_pool(db_url, size=4)
    app = create_app(
        pool, packager_for(store_root, cache_root, listing), CollectorRegistry(), Readiness()
    )
    await http_server(app, "127.0.0.1", port).serve()


def packager_process(*args: object) -> None:
    """The packager service in its own process (a `spawn` child: nothing inherited)."""
    asyncio.run(_serve_packager(*args))  # type: ignore[arg-type]


async def curl_to_file(url: str, key: str, out: Path) -> tuple[int, float]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--fail", "-o", str(out), "-w", "%{size_download} %{time_total}",
        "-H", f"Authorization: Bearer {key}", url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    got, _ = await proc.communicate()
    assert proc.returncode == 0, got
    size, seconds = got.split()
    return int(size), float(seconds)


def client_download(url: str, key: str, out: Path) -> tuple[int, float]:
    out.unlink(missing_ok=True)
    out.with_name(out.name + ".json").unlink(missing_ok=True)
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        t = time.perf_counter()
        got = download(http, url, out)
        return got.size, time.perf_counter() - t


async def downloads(
    report: Report, api: str, packager: str, key: str, dl: Path, total: int, rounds: int
) -> dict[str, tuple[float, float]]:
    """Best curl and client MB/s per format, on the API's origin."""
    best: dict[str, tuple[float, float]] = {}
    for fmt in FORMATS:
        path = f"/v1/studies/{STUDY}/archive?format={fmt}"
        report.say(f"{fmt} to a file over loopback through the API (best of {rounds})")
        best_curl = best_client = 0.0
        for _ in range(rounds):
            size, seconds = await curl_to_file(packager + path, key, dl / f"direct.{fmt}")
            report.rate(f"curl -o FILE, packager direct ({fmt})", size, seconds)
            size, seconds = await curl_to_file(api + path, key, dl / f"curl.{fmt}")
            rate = report.rate(f"curl -o FILE, API ({fmt}, reference)", size, seconds)
            best_curl = max(best_curl, rate)
            size, seconds = await asyncio.to_thread(
                client_download, api + path, key, dl / f"client.{fmt}.part"
            )
            rate = report.rate(f"dicomflow_client, API ({fmt})", size, seconds)
            best_client = max(best_client, rate)
        same = subprocess.run(["cmp", "-s", dl / f"curl.{fmt}", dl / f"client.{fmt}.part"])
        assert same.returncode == 0, f"{fmt}: the client's file differs from curl's"
        report.say(
            f"  best: curl {best_curl:.0f} MB/s, client {best_client:.0f} MB/s, "
            f"ratio client/curl {best_client / best_curl:.2f}x"
        )
        best[fmt] = (best_curl, best_client)
        target = dl / "unpacked" / fmt
        t = time.perf_counter()
        await asyncio.to_thread(unpack, dl / f"client.{fmt}.part", fmt, target, marker={})
        seconds = time.perf_counter() - t
        report.rate(f"verify + unpack ({fmt}, SHA-256 each file)", total, seconds)
        shutil.rmtree(target)
        for name in (f"curl.{fmt}", f"direct.{fmt}"):
            (dl / name).unlink()
    return best


async def bench(
    work: Path, files: list[Path], rounds: int, min_mb: float, results: Path | None
) -> None:
    report = Report()
    load_before = os.getloadavg()
    total = sum(f.stat().st_size for f in files)
    if total / 1e6 < min_mb:
        raise SystemExit(f"the study is {total / 1e6:.0f} MB, under --min-mb {min_mb:.0f}")
    store_root = work / "archive-store"
    cache_root = work / "client-download-cache"
    listing = as_one_study(files, store_root)
    report.say(f"one study: {len(files)} instances, {total / 1e6:.0f} MB")
    name = f"dicomflow_bench_{uuid.uuid4().hex[:8]}"
    db_url = f"{PG}/{name}"
    pool = await create_pool(db_url, size=2)
    dl = work / "client-downloads"
    shutil.rmtree(dl, ignore_errors=True)
    shutil.rmtree(cache_root, ignore_errors=True)
    dl.mkdir(parents=True)
    children: list[multiprocessing.process.BaseProcess] = []
    relay: subprocess.Popen[bytes] | None = None
    try:
        await migrate(pool)
        packager = packager_for(store_root, cache_root, listing)
        for fmt in FORMATS:
            plan = await packager.plan(STUDY, None, fmt)  # type: ignore[arg-type]
            assert plan is not None
            built = await packager.ensure(plan)
            report.say(f"  {fmt} archive built: {built.stat().st_size / 1e6:.1f} MB")
        async with pool.acquire() as conn:
            _, key = await create_key(conn, "clinician", "bench")
        pport, aport = free_port(), free_port()
        child = multiprocessing.get_context("spawn").Process(
            target=packager_process, args=(pport, db_url, store_root, cache_root, listing)
        )
        child.start()
        children.append(child)
        relay = subprocess.Popen(
            [sys.executable, "-m", "load_test.bench.relay_server", str(aport),
             f"http://127.0.0.1:{pport}"],
        )  # fmt: skip
        for port in (pport, aport):
            await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 60.0)
        api = f"http://127.0.0.1:{aport}"
        best = await downloads(report, api, f"http://127.0.0.1:{pport}", key, dl, total, rounds)

        study = Study(
            study_uid=STUDY, study_date=date.today(), study_description="bench",
            modalities=["CT"], series_count=1, instance_count=len(files), size_bytes=total,
            patient=Patient("BENCH", "Bench^Patient", None, "O"),
        )  # fmt: skip
        with Client(api, key) as client:
            t = time.perf_counter()
            folder = await asyncio.to_thread(fetch_study, client, study, dl / "fetch")
            seconds = time.perf_counter() - t
        report.rate("fetch_study via API (tar.zst, all steps)", total, seconds)
        assert sum(1 for _ in folder.rglob("*.dcm")) == len(files)
        if results is not None:
            write_summary(results, report, best, len(files), total, load_before)
    finally:
        if relay is not None:
            relay.terminate()
            relay.wait(10)
        for proc in children:
            proc.terminate()
            proc.join(10)
        shutil.rmtree(dl, ignore_errors=True)
        shutil.rmtree(cache_root, ignore_errors=True)
        await pool.close()
        import asyncpg

        admin = await asyncpg.connect(f"{PG}/postgres")
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def write_summary(
    folder: Path,
    report: Report,
    best: dict[str, tuple[float, float]],
    count: int,
    total: int,
    load_before: tuple[float, float, float],
) -> None:
    now = datetime.now(UTC)
    load = ", ".join(f"{x:.2f}" for x in load_before)
    load_after = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = "\n".join(
        f"| {fmt} | {c:.0f} | {k:.0f} | {k / c:.2f}x |" for fmt, (c, k) in best.items()
    )
    title = "Client download bench (`python -m load_test.bench.client_download`)"
    text = f"""# {title}, {now:%Y-%m-%d %H:%M} UTC

One synthetic study of {count} instances ({total / 1e6:.0f} MB), downloaded through the API's
origin (`/v1/studies/{{uid}}/archive` on the API, relayed to the packager, each in its own
process on loopback) by `curl -o FILE` and by dicomflow_client (the desktop client's and
`dicomflow fetch`'s download), best of each per format. Download rates are archive bytes
per second (the synthetic pixels compress far better than real ones, so the tar.zst is
small); verify + unpack and `fetch_study` are the study's bytes per second.
{os.cpu_count()} cores; load average (1, 5, 15 min) {load} at the start, {load_after} at
the end.

| format | curl MB/s | client MB/s | client / curl |
|---|---|---|---|
{rows}

```
{chr(10).join(report.lines)}
```
"""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"client-download-{now:%Y%m%d}.md"
    out.write_text(text)
    print(f"summary written to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--count", type=int, default=int(os.environ.get("BENCH_CLIENT_COUNT", 2500))
    )
    parser.add_argument("--min-mb", type=float, default=1000.0)
    parser.add_argument("--work", type=Path, default=Path("var/bench"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--results", type=Path, default=Path("load_test/results"),
        help="folder of the summary file; '-' writes none",
    )  # fmt: skip
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed: run deploy/dev/system-deps.sh")
    files = corpus(args.work / f"corpus-{args.count}", args.count)
    results = None if str(args.results) == "-" else args.results
    asyncio.run(bench(args.work.absolute(), files, args.rounds, args.min_mb, results))


if __name__ == "__main__":
    main()
