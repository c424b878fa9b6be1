"""`make bench`, search at scale: the study search and the study detail on an index of
1,000,000 instances / 100,000 studies, and an import into that index next to one into an
empty index, on the default stack (`dicomflow up`, as in `load_test.bench.ingest`).

1. A generated index in the real schema (migrations applied, every index in place): 50,000
   patients with Latin and Cyrillic names, 100,000 studies, 200,000 series, 1,000,000
   instances, as many `instance_sources` and ledger (`ingest_files`) rows, analysed. It is
   built once by set-based INSERT ... SELECT and kept as a template database named after the
   migrations and this generator's version; each run works on a copy of it.
2. `dicomflow up` on that copy; `GET /v1/studies` through the real API process for each
   search (name prefix in Cyrillic and in Latin, a short prefix, a later word of the name,
   birth date, year, modality, patient id, accession number) and `GET /v1/studies/{uid}`:
   median, p95, max over `--repeat` requests, each with other values.
3. `POST /v1/imports` of the 2,000-instance corpus into that index, timed to `completed`,
   next to the same import into an empty index in the same run (target: within 20%).

    python -m load_test.bench.search              # --repeat 100, corpus of 2,000

Only loopback ports chosen free for this run; everything started is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from libs.db.apikeys import create_key
from libs.db.migrations import migrate
from libs.db.pool import create_pool
from load_test.bench.ingest import PG, RESULTS, Up, cpu_by_owner, load, report_cpu
from load_test.bench.pipeline import corpus

GENERATOR = "1"  # bump when the generated index changes
PATIENTS, STUDIES, SERIES_PER_STUDY, INSTANCES_PER_SERIES = 50_000, 100_000, 2, 5
MIGRATIONS = Path(__file__).resolve().parents[2] / "libs" / "db" / "migrations"
LATIN = ["ka", "mo", "ri", "ta", "sen", "lu", "ber", "vo", "ni", "gra"]
CYRILLIC = ["ка", "мо", "ри", "та", "сен", "лу", "бер", "во", "ни", "гра"]
GIVEN = ["john", "marie", "olga", "tomasz", "eva", "иван", "анна", "петр", "ольга", "мария"]
MODALITIES = ["CT", "MR", "US", "CR", "DX", "MG", "NM", "PT", "XA", "RF"]
UID = "2.25.424242"  # generated UIDs: 2.25.424242.<study>[.<series>[.<instance>]]


def template_name() -> str:
    names = sorted(p.name for p in MIGRATIONS.glob("*.sql"))
    digest = hashlib.sha256((GENERATOR + "".join(names)).encode()).hexdigest()[:10]
    return f"dicomflow_bench_index_{digest}"


async def generate(conn: asyncpg.Connection) -> None:
    """The index, by set-based statements in the real schema (its indexes maintained)."""
    p0 = await conn.fetchval("SELECT coalesce(max(id), 0) FROM patients")
    # Surname: three syllables + 'ov' (1,000 Latin, 1,000 Cyrillic); given name of 10.
    await conn.execute(
        """
        INSERT INTO patients (patient_key, patient_id, patient_name, name_search, birth_date, sex)
        SELECT 'id:' || chr(31) || 'P' || g, 'P' || g,
               upper(n) || '^' || upper(gn), n || ' ' || gn,
               date '1930-01-01' + (g * 37 % 30000), CASE WHEN g % 2 = 0 THEN 'M' ELSE 'F' END
          FROM generate_series(1, $1::int) g,
               LATERAL (SELECT CASE WHEN g % 2 = 0 THEN $2::text[] ELSE $3::text[] END AS syl) s,
               LATERAL (SELECT s.syl[1 + g % 10] || s.syl[1 + (g / 10) % 10]
                               || s.syl[1 + (g / 100) % 10] || 'ov' AS n,
                               ($4::text[])[1 + (g / 1000) % 10] AS gn) name
        """,
        PATIENTS,
        LATIN,
        CYRILLIC,
        GIVEN,
    )
    await conn.execute(
        """
        INSERT INTO studies (study_uid, patient_pk, study_date, study_time, accession_number,
                             study_description, modalities, series_count, instance_count,
                             size_bytes, storage_prefix, stable)
        SELECT $1::text || '.' || h, $2::bigint + 1 + (h - 1) % $3::int,
               date '1995-01-01' + (h * 13 % 10950), '101500', 'A' || h, 'generated',
               ARRAY[($4::text[])[1 + h % 10]], $5::int, $5::int * $6::int,
               $5::int * $6::int * 525000, 'studies/' || $1 || '.' || h || '/', true
          FROM generate_series(1, $7::int) h
        """,
        UID,
        p0,
        PATIENTS,
        MODALITIES,
        SERIES_PER_STUDY,
        INSTANCES_PER_SERIES,
        STUDIES,
    )
    await conn.execute(
        """
        INSERT INTO series (series_uid, study_uid, modality, series_number, series_description,
                            instance_count, size_bytes)
        SELECT $1::text || '.' || h || '.' || n, $1 || '.' || h, ($2::text[])[1 + h % 10], n,
               'series ' || n, $4::int, $4::int * 525000
          FROM generate_series(1, $3::int) h, generate_series(1, $5::int) n
        """,
        UID,
        MODALITIES,
        STUDIES,
        INSTANCES_PER_SERIES,
        SERIES_PER_STUDY,
    )
    sop = "$1::text || '.' || h || '.' || n || '.' || i"
    each = (
        "generate_series(1, $2::int) h, generate_series(1, $3::int) n, "
        "generate_series(1, $4::int) i"
    )
    args = (UID, STUDIES, SERIES_PER_STUDY, INSTANCES_PER_SERIES)
    await conn.execute(
        f"""
        INSERT INTO instances (sop_instance_uid, series_uid, study_uid, sop_class_uid,
                               instance_number, transfer_syntax_uid, rows, columns, size_bytes,
                               file_sha256, content_sha256, storage_url, first_file_id)
        SELECT {sop}, $1 || '.' || h || '.' || n, $1 || '.' || h, '1.2.840.10008.5.1.4.1.1.2',
               i, '1.2.840.10008.1.2.1', 512, 512, 525000,
               md5({sop}) || md5('f' || {sop}), md5('c' || {sop}) || md5({sop}),
               'file:///var/store/studies/' || {sop} || '.dcm', 1
          FROM {each}
        """,
        *args,
    )
    await conn.execute(
        f"""
        INSERT INTO instance_sources (sop_instance_uid, source, uri, file_id, content_sha256)
        SELECT {sop}, 'nas', 'file:///nas/' || {sop} || '.dcm', 1,
               md5('c' || {sop}) || md5({sop})
          FROM {each}
        """,
        *args,
    )
    await conn.execute(
        f"""
        INSERT INTO ingest_files (source, uri, size, correlation_id, status, stage,
                                  sop_instance_uid, study_uid, finished_at)
        SELECT 'nas', 'file:///nas/' || {sop} || '.dcm', 525000, md5({sop}), 'indexed',
               'indexer', {sop}, $1 || '.' || h, now()
          FROM {each}
        """,
        *args,
    )
    await conn.execute("VACUUM ANALYZE")


async def ensure_template() -> str:
    """The generated index as a template database, built if absent (minutes, once)."""
    name = template_name()
    admin = await asyncpg.connect(f"{PG}/postgres")
    try:
        stale = await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'dicomflow\\_bench\\_index\\_%'"
            " AND datname <> $1",
            name,
        )
        for row in stale:  # built for other migrations, 1.4 GB each; left alone while in use
            with contextlib.suppress(asyncpg.ObjectInUseError):
                await admin.execute(f'DROP DATABASE IF EXISTS "{row[0]}"')
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return name
        building = f"{name}_building"
        await admin.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{building}"')
        pool = await create_pool(f"{PG}/{building}", size=1)
        try:
            await migrate(pool)
        finally:
            await pool.close()
        t = time.perf_counter()
        conn = await asyncpg.connect(f"{PG}/{building}")  # no statement timeout: minutes
        try:
            await generate(conn)
        finally:
            await conn.close()
        print(f"  generated the index in {time.perf_counter() - t:.0f}s ({load()})")
        await admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        return name
    finally:
        await admin.close()


async def copy_of(template: str) -> str:
    db = f"dicomflow_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{PG}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{db}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    return db


async def drop(db: str) -> None:
    admin = await asyncpg.connect(f"{PG}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    finally:
        await admin.close()


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


Params = Callable[[int], dict[str, str]]


def cyr(n: int) -> str:  # Cyrillic surnames (odd patients) start with an odd syllable
    return CYRILLIC[(2 * n + 1) % 10] + CYRILLIC[(n // 5) % 10]


def lat(n: int) -> str:
    return LATIN[(2 * n) % 10] + LATIN[(n // 5) % 10]


SEARCHES: dict[str, Params] = {
    "name prefix, Cyrillic (2 syllables)": lambda n: {"patient_name": cyr(n)},
    "name prefix, Latin (2 syllables)": lambda n: {"patient_name": lat(n)},
    "name prefix, 1 syllable (broad)": lambda n: {"patient_name": cyr(n)[:2]},
    "a later word of the name + birth date": lambda n: {
        "patient_name": GIVEN[n % 10],
        "birth_date": f"{1930 + n % 80}-0{1 + n % 9}-1{n % 10}",
    },
    "birth date": lambda n: {"birth_date": f"{1930 + n % 80}-0{1 + n % 9}-1{n % 10}"},
    "year": lambda n: {"year": str(1995 + n % 30)},
    "modality": lambda n: {"modality": MODALITIES[n % 10]},
    "modality + year": lambda n: {"modality": MODALITIES[n % 10], "year": str(1995 + n % 30)},
    "patient id": lambda n: {"patient_id": f"P{1 + n * 997 % PATIENTS}"},
    "accession number": lambda n: {"accession_number": f"A{1 + n * 991 % STUDIES}"},
}


async def search_figures(
    api: str, db: str, repeat: int, cpu: Callable[[], dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Latency of each search, and the CPU the API process and PostgreSQL spent on it (the
    steadier figure on a shared machine). Each search has its own API key: one key may make
    600 requests a minute (the default API_RATE_PER_KEY), and the bench changes no setting;
    beyond the address's 1,200 a minute, a 429 is waited out and not timed."""
    conn = await asyncpg.connect(f"{PG}/{db}")
    try:
        keys = [(await create_key(conn, "clinician", f"bench {n}"))[1] for n in range(12)]
    finally:
        await conn.close()
    out: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(base_url=api, timeout=30) as c:
        c.headers["Authorization"] = f"Bearer {keys.pop()}"
        for n in range(5):  # warm the connection and the API's first-request paths
            (await c.get("/v1/studies", params=SEARCHES["patient id"](n))).raise_for_status()
        every: list[float] = []
        cases: list[tuple[str, Params | None]] = [*SEARCHES.items(), ("study detail", None)]
        for label, params in cases:
            samples, matched, bound = [], 0, False
            c.headers["Authorization"] = f"Bearer {keys.pop()}"
            cpu0 = cpu()
            for n in range(repeat):
                if params is None:
                    url, query = f"/v1/studies/{UID}.{1 + n * 7919 % STUDIES}", {}
                else:
                    url, query = "/v1/studies", {**params(n), "limit": "50"}
                while True:
                    t = time.perf_counter()
                    r = await c.get(url, params=query)
                    if r.status_code != 429:  # over a rate limit: wait, untimed, and again
                        break
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                samples.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, (label, r.status_code, r.text[:300])
                body = r.json()
                matched += body["total"] if params is not None else len(body["series"])
                bound = bound or body.get("total_exact") is False  # counted up to a limit
            every += samples
            cpu1 = cpu()
            used = {k: 1000 * (cpu1[k] - cpu0.get(k, 0.0)) / repeat for k in SERVER}
            out[label] = row(label, samples, matched / repeat, used, bound=bound)
        out["all"] = row("all of them", every, None, {})
    return out


SERVER = ("api", "postgresql (backends)")


def row(
    label: str,
    samples: list[float],
    matched: float | None,
    cpu: dict[str, float],
    *,
    bound: bool = False,
) -> dict[str, float]:
    r = {
        "median_ms": statistics.median(samples),
        "p95_ms": pct(samples, 0.95),
        "max_ms": max(samples),
        **{f"cpu_ms_{k.split()[0]}": v for k, v in cpu.items()},
    }
    more = "+" if bound else " "  # the API stopped counting (API_SEARCH_COUNT_LIMIT)
    hits = f"  {matched:>7,.0f}{more} match" if matched is not None else ""
    used = f"  CPU api {cpu[SERVER[0]]:5.1f} + pg {cpu[SERVER[1]]:5.1f} ms" if cpu else ""
    print(
        f"    {label:<38} median {r['median_ms']:6.1f}  p95 {r['p95_ms']:6.1f}  "
        f"max {r['max_ms']:6.1f} ms{used}{hits}"
    )
    return r


async def run_stack(
    work: Path, db: str, files: list[Path], *, searches: int
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """`dicomflow up` on `db`: the searches (if `searches`), then the timed import."""
    var = work / "search-state"
    shutil.rmtree(var, ignore_errors=True)
    up = Up(var=var, db=db, corpus=work / "corpus")
    up.start()
    assert up.process is not None
    try:
        key = await up.wait_ready()
        api = f"http://127.0.0.1:{up.ports['api']}"
        await asyncio.sleep(2)  # start-up rounds settle
        figures = {}
        if searches:
            print(f"  GET /v1/studies on the generated index, {searches} requests each ({load()}):")
            pid = up.process.pid

            def server_cpu() -> dict[str, float]:
                return cpu_by_owner(pid, db)[0]

            figures = await search_figures(api, db, searches, server_cpu)
        cpu0, _ = cpu_by_owner(up.process.pid, db)
        load0 = load()
        async with httpx.AsyncClient(
            base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as c:
            t = time.perf_counter()
            r = await c.post("/v1/imports", json={"source_path": str(up.corpus)})
            assert r.status_code == 202, r.text
            task_id = r.json()["task_id"]
            while True:
                r = await c.get(f"/v1/imports/{task_id}")
                if r.status_code == 429:  # the searches before used the address's budget
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                body = r.json()
                if body["status"] in ("completed", "failed"):
                    break
                if time.perf_counter() - t > 1800:
                    raise RuntimeError(f"import not finished after 30 min: {body}")
                await asyncio.sleep(0.2)
            seconds = time.perf_counter() - t
        cpu1, _ = cpu_by_owner(up.process.pid, db)
        n = len(files)
        counters = {k: v for k, v in body["counters"].items() if k != "failures"}
        print(
            f"  import {body['status']} {counters}: {n / seconds:.0f} instances/s "
            f"({seconds:.1f}s; {load0} -> {load()})"
        )
        cpu_ms = report_cpu("CPU until completed:", cpu0, cpu1, n)
        result = {"inst_s": n / seconds, "cpu_ms": cpu_ms, "load": [load0, load()]}
        return result, figures
    finally:
        up.stop()
        shutil.rmtree(var, ignore_errors=True)


async def bench(work: Path, files: list[Path], repeat: int) -> dict[str, Any]:
    print(f"\nsearch at scale ({load()}):")
    t = time.perf_counter()
    template = await ensure_template()
    print(f"  index template {template} ready in {time.perf_counter() - t:.0f}s")
    big = await copy_of(template)
    try:
        print(
            f"\n  index of {STUDIES * SERIES_PER_STUDY * INSTANCES_PER_SERIES:,} instances / "
            f"{STUDIES:,} studies / {PATIENTS:,} patients:"
        )
        full, figures = await run_stack(work, big, files, searches=repeat)
    finally:
        await drop(big)
    empty = f"dicomflow_bench_{uuid.uuid4().hex[:8]}"
    try:
        print("\n  empty index, same corpus:")
        bare, _ = await run_stack(work, empty, files, searches=0)
    finally:
        await drop(empty)
    ratio = full["inst_s"] / bare["inst_s"]
    worst = max(v["p95_ms"] for k, v in figures.items() if k != "all")
    print(
        f"\n  import into the 1M index / into an empty one: {ratio:.2f}x "
        f"({full['inst_s']:.0f} vs {bare['inst_s']:.0f} instances/s; target >= 0.80x)"
    )
    print(
        f"  CPU ms/instance, 1M index / empty: {full['cpu_ms']:.2f} / {bare['cpu_ms']:.2f} = "
        f"{full['cpu_ms'] / bare['cpu_ms']:.2f}x (the steadier figure on a shared machine)"
    )
    print(f"  worst search/detail p95: {worst:.1f} ms (target < 20 ms) ({load()})")
    return {"searches": figures, "import_full": full, "import_empty": bare, "ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=int(os.environ.get("BENCH_COUNT", 2000)))
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--work", type=Path, default=Path("var/bench"))
    args = parser.parse_args()
    work = args.work.absolute()
    files = corpus(work / "corpus", args.count)
    out = asyncio.run(bench(work, files, args.repeat))
    RESULTS.mkdir(exist_ok=True)
    out |= {"count": len(files), "cpus": os.cpu_count(), "load": load()}
    (RESULTS / "search-latest.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
