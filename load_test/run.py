"""`make loadtest`: the Locust scenarios (load_test/locustfile.py), headless and time-bounded,
against a local stack it starts (embedded broker, fresh database, the services as processes,
as in the e2e tests: the pipeline, the API, the packager behind it, and an orthanc-watcher
following a real Orthanc that holds part of the demo set, for the webhook), seeded with the
synthetic demo set. Writes a summary (requests/s, p50/p95/p99, failures per request type) to
load_test/results/.

    python -m load_test.run --seconds 60 --users 20
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from libs.db.apikeys import create_key
from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.dicom.synthetic import generate_demo_set
from libs.tools.dev_broker import broker_argv, free_port, wait_for_port
from load_test.peers import Orthanc
from load_test.process_stack import PIPELINE, Stack, stack_env

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PG = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
DEMO_NAMES = "ivanov,petrova,muller,smith,wang"
COLUMNS = {
    "requests": "Request Count",
    "failures": "Failure Count",
    "rps": "Requests/s",
    "p50_ms": "50%",
    "p95_ms": "95%",
    "p99_ms": "99%",
}


def summary(stats_csv: Path) -> list[dict[str, Any]]:
    rows = []
    with stats_csv.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out: dict[str, Any] = {"type": row["Type"], "name": row["Name"]}
            for key, column in COLUMNS.items():
                value = row.get(column, "")
                out[key] = float(value) if value not in ("", "N/A") else None
            rows.append(out)
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# Load test {meta['started']}",
        "",
        f"{meta['users']} users (spawn rate {meta['spawn_rate']}/s) for {meta['seconds']}s "
        f"against a local stack on {meta['cpus']} CPUs; seeded with {meta['seeded']} instances.",
        "",
        "| type | name | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:

        def f(key: str, r: dict[str, Any] = r) -> str:
            v = r[key]
            return "" if v is None else (f"{v:.1f}" if key == "rps" else f"{v:.0f}")

        lines.append(
            f"| {r['type']} | {r['name']} | {f('requests')} | {f('failures')} | {f('rps')} "
            f"| {f('p50_ms')} | {f('p95_ms')} | {f('p99_ms')} |"
        )
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace) -> Path:
    work = Path(tempfile.mkdtemp(prefix="dicomflow-loadtest-"))
    db = f"dicomflow_loadtest_{uuid.uuid4().hex[:8]}"
    url = f"{PG}/{db}"
    pool = await create_pool(url, size=2)
    await migrate(pool)
    port = free_port()
    broker = subprocess.Popen(
        broker_argv(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    stack: Stack | None = None
    orthanc = Orthanc(root=work / "orthanc")
    try:
        wait_for_port("127.0.0.1", port)
        orthanc.start()
        env, ports = stack_env(work, url, f"127.0.0.1:{port}")
        env["LOG_LEVEL"] = "WARNING"
        env["ORTHANC_URL"] = orthanc.url
        env["ORTHANC_USERNAME"], env["ORTHANC_PASSWORD"] = orthanc.auth
        async with pool.acquire() as conn:
            _, admin = await create_key(conn, "admin", "loadtest")
            _, clinician = await create_key(conn, "clinician", "loadtest")
            _, ops = await create_key(conn, "ops", "loadtest")
        stack = Stack(root=work, env=env, ports=ports, key=admin)
        services = [*PIPELINE, "api", "packager", "orthanc-watcher"]
        for name in services:
            stack.start(name)
        await stack.wait_ready(services, timeout=240)  # a busy machine starts slowly
        demo = work / "imports" / "demo"
        seeded = generate_demo_set(demo)
        # Part of the demo set in Orthanc too: the studies the webhook scenario names.
        in_orthanc = {orthanc.upload(p)["ParentStudy"] for p in sorted(demo.rglob("*.dcm"))[:12]}
        task = await stack.wait_task(await stack.start_import(demo), timeout=300)
        assert task["status"] == "completed", task

        RESULTS.mkdir(exist_ok=True)
        started = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        prefix = work / "locust"
        locust_env = {
            **os.environ,
            "LOADTEST_CLINICIAN_KEY": clinician,
            "LOADTEST_OPS_KEY": ops,
            "LOADTEST_IMPORT_PATH": str(demo),
            "LOADTEST_PATIENT_NAMES": DEMO_NAMES,
            "LOADTEST_ORTHANC_WEBHOOK_URL": (
                f"http://127.0.0.1:{ports['orthanc-watcher']}/v1/ingest/orthanc"
            ),
            "LOADTEST_ORTHANC_STUDY_IDS": ",".join(sorted(in_orthanc)),
        }
        locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or "locust"
        cmd = [
            locust,
            "-f",
            str(HERE / "locustfile.py"),
            "--headless",
            "--host",
            stack.api,
            "--users",
            str(args.users),
            "--spawn-rate",
            str(args.spawn_rate),
            "--run-time",
            f"{args.seconds}s",
            "--stop-timeout",
            "10",
            "--csv",
            str(prefix),
            "--only-summary",
            "--exit-code-on-error",
            "0",
        ]
        done = subprocess.run(cmd, env=locust_env, check=False, timeout=args.seconds + 120)
        if done.returncode != 0:
            raise SystemExit(f"locust exited with {done.returncode}")
        rows = summary(Path(f"{prefix}_stats.csv"))
        meta = {
            "started": started,
            "users": args.users,
            "spawn_rate": args.spawn_rate,
            "seconds": args.seconds,
            "cpus": os.cpu_count(),
            "seeded": seeded,
        }
        out = RESULTS / f"loadtest-{started}.md"
        out.write_text(markdown(rows, meta), encoding="utf-8")
        (RESULTS / "latest.json").write_text(
            json.dumps({**meta, "results": rows}, indent=2) + "\n", encoding="utf-8"
        )
        shutil.copyfile(out, RESULTS / "latest.md")
        return out
    finally:
        if stack is not None:
            stack.stop_all()
        orthanc.stop()
        broker.terminate()
        broker.wait()
        await pool.close()
        conn = await asyncpg.connect(f"{PG}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        finally:
            await conn.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=5)
    out = asyncio.run(run(parser.parse_args()))
    print(out.read_text(encoding="utf-8"))
    print(f"written: {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
