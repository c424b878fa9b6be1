"""Which stage is an import's critical path: the default stack as the ingest bench starts it
(`load_test.bench.ingest.Up`), one import of the bench's corpus, each stage's handled
messages sampled every 0.1 s from its ops port, then each stage's batches from the stack's
log ("batch handled" lines: when each ended and how long it took).

    python -m load_test.bench.timeline --count 2000

A stage busy for all of its span (busy/span near 1; above 1 with batches in flight at once)
is the one the others wait for. Scraping /metrics ten times a second costs the stages CPU:
take CPU figures from `load_test.bench.ingest`, not from here. Nothing is written to
load_test/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx

from load_test.bench.ingest import PG, Up, load, metric
from load_test.bench.pipeline import corpus

COUNTERS = {
    "nas-watcher": "dicomflow_nas_watcher_events_produced_total",
    "extractor": "dicomflow_extractor_messages_total",
    "dedup": "dicomflow_dedup_messages_total",
    "storage-writer": "dicomflow_storage_writer_messages_total",
    "indexer": "dicomflow_indexer_messages_total",
    "jpg-converter": "dicomflow_jpg_converter_messages_total",
}


@dataclass(frozen=True)
class Batch:
    service: str
    started: float  # epoch seconds
    ended: float
    messages: int


@dataclass(frozen=True)
class Span:
    service: str
    batches: int
    messages: int
    first: float  # seconds after the earliest batch of any stage began
    last: float
    busy: float  # seconds inside batches (summed: overlapping batches count twice)


def batches(log_lines: list[str]) -> list[Batch]:
    """The "batch handled" lines of a `dicomflow up` log (`<service> | {json}`)."""
    out = []
    for line in log_lines:
        if '"batch handled"' not in line or "|" not in line:
            continue
        try:
            entry = json.loads(line.split("|", 1)[1])
        except ValueError:
            continue
        ended = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
        out.append(Batch(entry["service"], ended - entry["ms"] / 1000, ended, entry["messages"]))
    return out


def spans(found: list[Batch]) -> list[Span]:
    if not found:
        return []
    t0 = min(b.started for b in found)
    out = []
    for service in dict.fromkeys(b.service for b in found):
        mine = [b for b in found if b.service == service]
        out.append(
            Span(
                service,
                len(mine),
                sum(b.messages for b in mine),
                min(b.started for b in mine) - t0,
                max(b.ended for b in mine) - t0,
                sum(b.ended - b.started for b in mine),
            )
        )
    return out


async def sample(up: Up, key: str, count: int, every: float) -> tuple[float, list[list[float]]]:
    """POST the import, sample the counters until every stage handled the corpus; the
    seconds to `completed` and the samples (time, one count per stage)."""
    rows: list[list[float]] = []
    done_at = None
    headers = {"Authorization": f"Bearer {key}"}
    api = f"http://127.0.0.1:{up.ports['api']}"
    client = httpx.AsyncClient(base_url=api, headers=headers, timeout=30)
    async with client as c, httpx.AsyncClient() as m:
        t = time.perf_counter()
        r = await c.post("/v1/imports", json={"source_path": str(up.corpus)})
        task = r.json()["task_id"]
        while time.perf_counter() - t < 600:
            ports = [up.ports[s] for s in COUNTERS]
            counts = await asyncio.gather(
                *(metric(m, p, n) for p, n in zip(ports, COUNTERS.values(), strict=True))
            )
            rows.append([time.perf_counter() - t, *counts])
            if done_at is None:
                body = (await c.get(f"/v1/imports/{task}")).json()
                if body["status"] in ("completed", "failed"):
                    done_at = time.perf_counter() - t
            elif min(counts[1:]) >= count:
                break
            await asyncio.sleep(every)
    return done_at or float("nan"), rows


async def run(work: Path, count: int, every: float) -> None:
    corpus(work / "corpus", count)
    db = f"dicomflow_bench_{uuid.uuid4().hex[:8]}"
    var = work / "state"
    shutil.rmtree(var, ignore_errors=True)
    up = Up(var=var, db=db, corpus=work / "corpus")
    up.start()
    try:
        key = await up.wait_ready()
        await asyncio.sleep(2)
        load0 = load()
        done_at, rows = await sample(up, key, count, every)
        print(f"completed in {done_at:.2f}s ({count / done_at:.0f}/s; {load0} -> {load()})")
        print("     s " + " ".join(f"{s[:10]:>10}" for s in COUNTERS))
        for row in rows:
            print(f"{row[0]:6.2f} " + " ".join(f"{v:10.0f}" for v in row[1:]))
    finally:
        up.stop()
        conn = await asyncpg.connect(f"{PG}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        finally:
            await conn.close()
    lines = (var / "up.log").read_text(errors="replace").splitlines()
    shutil.rmtree(var, ignore_errors=True)
    print("\nbatches (s after the first batch began; busy: summed batch time)")
    for s in spans(batches(lines)):
        print(
            f"  {s.service:<15} {s.batches:4} batches {s.messages:6} msgs  {s.first:6.2f} .. "
            f"{s.last:6.2f}  busy {s.busy:6.2f} of {s.last - s.first:6.2f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=Path("var/bench"))
    parser.add_argument("--every", type=float, default=0.1, help="seconds between samples")
    args = parser.parse_args()
    asyncio.run(run(args.work.absolute(), args.count, args.every))


if __name__ == "__main__":
    main()
