"""`make bench`: the clients' download rate (dicomflow_client, shared by the desktop client
and `dicomflow fetch`) against `curl` on the same archive in the same run.

The pipeline bench's synthetic corpus (default 2,000 instances, ~1 GB) as ONE study, its
ZIP (stored: full size) and tar.zst built by the packager, served by the packager's HTTP
app on loopback. For each: `curl -o FILE` (reference) and the client's resumable download
to a file, best of `--rounds`; then the client's verification + unpack (SHA-256 of every
file against the manifest, into the study folder) and the whole `fetch_study`.

Not a test: figures vary with the machine; the ratios are what to compare across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import time
import uuid
from datetime import date
from pathlib import Path

import httpx
from dicomflow_client import Client, Patient, Study, fetch_study
from dicomflow_client.download import download
from dicomflow_client.unpack import unpack
from prometheus_client import CollectorRegistry

from libs.db.apikeys import create_key
from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.runtime.probes import Readiness, http_server
from libs.storage import open_store
from libs.tools.dev_broker import free_port
from load_test.bench.archive import STUDY, as_one_study, line
from load_test.bench.pipeline import PG, corpus
from services.packager.app import create_app
from services.packager.cache import ArchiveCache
from services.packager.packager import Encoding, Packager


async def curl_to_file(url: str, key: str, out: Path) -> tuple[int, float]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-o", str(out), "-w", "%{size_download} %{time_total}",
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


async def bench(work: Path, files: list[Path], rounds: int) -> None:
    total = sum(f.stat().st_size for f in files)
    store_root = work / "archive-store"
    listing = as_one_study(files, store_root)
    print(f"one study: {len(files)} instances, {total / 1e6:.0f} MB")
    name = f"dicomflow_bench_{uuid.uuid4().hex[:8]}"
    pool = await create_pool(f"{PG}/{name}", size=4)
    dl = work / "client-downloads"
    shutil.rmtree(dl, ignore_errors=True)
    dl.mkdir(parents=True)
    try:
        await migrate(pool)
        cache = ArchiveCache(work / "archive-cache", 1 << 40)
        cache.prepare()

        async def listings(study: str, series: str | None) -> object:
            return listing

        async def publish(*_: object) -> None:
            return None

        packager = Packager(
            store=open_store(store_root.as_uri()),
            cache=cache,
            listings=listings,  # type: ignore[arg-type]
            publish=publish,
            encoding=Encoding(3, -1),
        )
        for fmt in ("zip", "tar.zst"):
            plan = await packager.plan(STUDY, None, fmt)  # type: ignore[arg-type]
            assert plan is not None
            await packager.ensure(plan)
        async with pool.acquire() as conn:
            _, key = await create_key(conn, "clinician", "bench")
        port = free_port()
        server = http_server(
            create_app(pool, packager, CollectorRegistry(), Readiness()), "127.0.0.1", port
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        for fmt in ("zip", "tar.zst"):
            url = f"{base}/v1/studies/{STUDY}/archive?format={fmt}"
            print(f"{fmt} download over loopback to a file (best of {rounds})")
            best_curl = best_client = 0.0
            for _ in range(rounds):
                size, seconds = await curl_to_file(url, key, dl / f"curl.{fmt}")
                best_curl = max(best_curl, line(f"curl -o FILE ({fmt}, reference)", size, seconds))
                size, seconds = await asyncio.to_thread(
                    client_download, url, key, dl / f"client.{fmt}.part"
                )
                best_client = max(
                    best_client, line(f"dicomflow_client download ({fmt})", size, seconds)
                )
            print(f"  best: curl {best_curl:.0f} MB/s, client {best_client:.0f} MB/s, "
                  f"ratio {best_client / best_curl:.2f}x")  # fmt: skip
            target = dl / "unpacked" / fmt
            t = time.perf_counter()
            await asyncio.to_thread(unpack, dl / f"client.{fmt}.part", fmt, target, marker={})
            line(f"verify + unpack ({fmt}, SHA-256 of every file)", total, time.perf_counter() - t)
            shutil.rmtree(target)
            (dl / f"curl.{fmt}").unlink()

        study = Study(
            study_uid=STUDY, study_date=date.today(), study_description="bench",
            modalities=["CT"], series_count=1, instance_count=len(files), size_bytes=total,
            patient=Patient("BENCH", "Bench^Patient", None, "O"),
        )  # fmt: skip
        with Client(base, key) as client:
            t = time.perf_counter()
            folder = await asyncio.to_thread(fetch_study, client, study, dl / "fetch")
            line("fetch_study (tar.zst: download, verify, unpack)", total, time.perf_counter() - t)
        assert sum(1 for _ in folder.rglob("*.dcm")) == len(files)
        server.should_exit = True
        await task
    finally:
        shutil.rmtree(dl, ignore_errors=True)
        await pool.close()
        import asyncpg

        conn = await asyncpg.connect(f"{PG}/postgres")
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=int(os.environ.get("BENCH_COUNT", 2000)))
    parser.add_argument("--work", type=Path, default=Path("var/bench"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed: run deploy/dev/system-deps.sh")
    files = corpus(args.work / "corpus", args.count)
    asyncio.run(bench(args.work.absolute(), files, args.rounds))


if __name__ == "__main__":
    main()
