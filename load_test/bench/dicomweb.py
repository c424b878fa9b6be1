"""`make bench`: DICOMweb figures, next to Orthanc's DICOMweb plugin on the same files.

1. A series of `--instances` (default 600) synthetic CT images of 512x512, indexed the way
   the pipeline does (extractor's `extract_file`, canonical copy in a file:// store, the
   indexer's `index_instance`) in a fresh database; the API app served by uvicorn.
2. Series metadata (WADO-RS /metadata of the 600): median and p95 over repeated requests.
3. QIDO-RS /studies p95 on a generated index of `--studies` (default 100,000) studies,
   for name (prefix, fuzzy), patient id, date range, accession, modality and the bare
   first page; the query plans are checked for sequential scans of the big tables.
4. Retrieval: the whole series as multipart/related application/dicom (curl -o /dev/null)
   and one instance at a time; reference: `cat` of the same files.
5. The same requests against Orthanc (Debian `orthanc` + `orthanc-dicomweb`) holding the
   same 600 files, when its plugin is installed.

Not a test: figures vary with the machine; compare the ratios across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path

import asyncpg
import httpx
from prometheus_client import CollectorRegistry

from libs.contracts.events import FileRef, InstanceStored
from libs.db.apikeys import create_key
from libs.db.dicomweb import QidoFilter, study_query
from libs.db.index import index_instance
from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.dicom.extract import extract_file
from libs.dicom.names import search_key
from libs.dicom.synthetic import make_dataset, write_instance
from libs.imaging.isolated import IsolatedRenderer
from libs.runtime.probes import Readiness, http_server
from libs.storage import instance_key
from libs.storage.local import LocalStore
from libs.tools.dev_broker import free_port
from load_test.bench.archive import line
from load_test.bench.pipeline import PG
from load_test.peers import Orthanc
from services.api.app import create_app
from services.api.config import ApiLimits
from services.api.dicomweb import DicomWebPorts
from services.api.previews import PreviewSource

STUDY, SERIES = "2.25.5151", "2.25.5151.1"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SURNAMES = ["Иванов", "Петров", "Сидоров", "Smith", "Müller", "García", "Nguyen", "Kowalski"]
GIVEN = ["Иван", "Анна", "Пётр", "John", "José", "Marie", "Olga", "Li", "Tomasz", "Eva"]


def series_files(root: Path, count: int) -> list[Path]:
    marker = root / f".complete-{count}"
    files = [root / f"{n:05d}.dcm" for n in range(count)]
    if marker.exists():
        return files
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for n, path in enumerate(files):
        ds = make_dataset(
            patient_id="BENCH-DW",
            patient_name="Bench^Series",
            study_uid=STUDY,
            series_uid=SERIES,
            sop_uid=f"{SERIES}.{n + 1}",
            rows=512,
            columns=512,
            instance_number=n + 1,
            pixel_seed=n,
        )
        write_instance(path, ds)
    marker.touch()
    return files


async def index_series(pool: asyncpg.Pool, store: LocalStore, files: list[Path]) -> None:
    for n, path in enumerate(files, start=1):
        header, hashes = extract_file(str(path))
        key = instance_key(STUDY, SERIES, header.instance.sop_instance_uid)
        target = store.path_for(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(path, target)
        event = InstanceStored(
            correlation_id=f"bench-{n}",
            source="bench",
            file=FileRef(file_id=n, uri=path.as_uri(), size=path.stat().st_size),
            header=header,
            hashes=hashes,
            disposition="new",
            storage_url=store.url_for(key),
        )
        async with pool.acquire() as conn:
            await index_instance(conn, event)


async def generate_index(pool: asyncpg.Pool, studies: int) -> None:
    names = [f"{s}^{g}" for s in SURNAMES for g in GIVEN]
    keys = [search_key(n) for n in names]
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO patients (patient_key, patient_id, patient_name, name_search,
                                     birth_date, sex)
               SELECT 'id:' || chr(31) || 'G' || g, 'G' || g,
                      ($2::text[])[1 + g % array_length($2, 1)],
                      ($3::text[])[1 + g % array_length($3, 1)],
                      date '1930-01-01' + (g % 30000), CASE WHEN g % 2 = 0 THEN 'F' ELSE 'M' END
                 FROM generate_series(1, $1) g""",
            studies,
            names,
            keys,
        )
        await conn.execute(
            """INSERT INTO studies (study_uid, patient_pk, study_date, accession_number,
                                    study_description, modalities, series_count, instance_count,
                                    size_bytes, storage_prefix)
               SELECT '2.25.7' || g, p.id, date '2000-01-01' + (g * 7 % 9000), 'A' || g,
                      'generated', ARRAY[(ARRAY['CT','MR','US','CR','DX'])[1 + g % 5]], 1, 100,
                      50000000, 'studies/2.25.7' || g || '/'
                 FROM generate_series(1, $1) g JOIN patients p ON p.patient_id = 'G' || g""",
            studies,
        )
        await conn.execute("ANALYZE patients; ANALYZE studies")


QUERIES: dict[str, Callable[[int], dict[str, str]]] = {
    "PatientName=<surname>*": lambda n: {"PatientName": f"{SURNAMES[n % 8]}*"},
    "PatientName fuzzy (given name)": lambda n: {
        "PatientName": GIVEN[n % 10],
        "fuzzymatching": "true",
    },
    "PatientID": lambda n: {"PatientID": f"G{1 + n * 997 % 90000}"},
    "StudyDate range (30 days)": lambda n: {
        "StudyDate": f"{2001 + n % 20}0301-{2001 + n % 20}0331"
    },
    "AccessionNumber": lambda n: {"AccessionNumber": f"A{1 + n * 991 % 90000}"},
    "ModalitiesInStudy + year": lambda n: {
        "ModalitiesInStudy": "MR",
        "StudyDate": f"{2001 + n % 20}0101-{2001 + n % 20}1231",
    },
    "first page (no filter)": lambda n: {},
}


async def timed(fn: Callable[[], Awaitable[object]], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def p95(samples: list[float]) -> float:
    return sorted(samples)[max(0, int(len(samples) * 0.95) - 1)]


def ms(label: str, samples: list[float]) -> None:
    print(f"  {label:<44} median {statistics.median(samples):7.1f} ms  p95 {p95(samples):7.1f} ms")


async def explain(pool: asyncpg.Pool) -> None:
    """Plans of the study queries: a sequential scan of studies or patients is reported."""
    filters = {
        "PatientName prefix": QidoFilter(patient_name="ivanov*"),
        "PatientName fuzzy": QidoFilter(patient_name="ivan", fuzzy=True),
        "PatientID": QidoFilter(patient_id="G42"),
        "StudyDate": QidoFilter(study_date=(date(2010, 3, 1), date(2010, 3, 31))),
        "AccessionNumber": QidoFilter(accession_number="A42"),
    }
    async with pool.acquire() as conn:
        for label, f in filters.items():
            sql, args = study_query(f, limit=101, offset=0)
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *args))
            scans = [t for t in ("studies", "patients") if f"Seq Scan on {t}" in plan]
            print(f"  plan {label:<24} {'seq scan of ' + ', '.join(scans) if scans else 'indexes'}")


async def curl(url: str, *args: str) -> tuple[int, float]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", *args, url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    size, seconds = out.split()
    return int(size), float(seconds)


async def dicomweb_figures(
    label: str,
    client: httpx.AsyncClient,
    base: str,
    auth: list[str],
    files: list[Path],
    repeat: int,
) -> None:
    total = sum(f.stat().st_size for f in files)
    series = f"{base}/studies/{STUDY}/series/{SERIES}"

    accept_json = {"Accept": "application/dicom+json"}
    first = await client.get(f"{series}/metadata", headers=accept_json)
    assert first.status_code == 200 and len(first.json()) == len(files), first.status_code

    async def metadata() -> None:  # time to the last byte; the client's JSON parse is not timed
        r = await client.get(f"{series}/metadata", headers=accept_json)
        assert r.status_code == 200

    ms(f"{label}: series metadata ({len(files)} instances)", await timed(metadata, repeat))
    accept = 'Accept: multipart/related; type="application/dicom"; transfer-syntax=*'
    size, seconds = await curl(series, "-H", accept, *auth)
    assert size > total, size
    line(f"{label}: series retrieve (curl)", size, seconds)

    async def one(n: int) -> None:
        r = await client.get(
            f"{series}/instances/{SERIES}.{n}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert r.status_code == 200

    some = min(len(files), 100)
    t = time.perf_counter()
    for n in range(1, some + 1):
        await one(n)
    size = sum(f.stat().st_size for f in files[:some])
    line(f"{label}: {some} instances one by one (httpx)", size, time.perf_counter() - t)


async def bench(work: Path, files: list[Path], studies: int, repeat: int, orthanc: bool) -> None:
    total = sum(f.stat().st_size for f in files)
    print(f"series: {len(files)} instances, {total / 1e6:.0f} MB; index: {studies} studies")
    t = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    line("cat of the files (reference)", total, time.perf_counter() - t)
    name = f"dicomflow_bench_{uuid.uuid4().hex[:8]}"
    pool = await create_pool(f"{PG}/{name}", size=4)
    renderer = IsolatedRenderer(1, 1024, 30)
    try:
        await migrate(pool)
        store = LocalStore((work / "dicomweb-store").as_uri())
        await index_series(pool, store, files)
        await generate_index(pool, studies)
        await explain(pool)
        async with pool.acquire() as conn:
            _, key = await create_key(conn, "clinician", "bench")
        ports = DicomWebPorts(store, PreviewSource(store, renderer), renderer.executor)

        async def publish(*_: object) -> None:
            return None

        unlimited = "1000000/minute"  # one key from one address, far faster than a person
        limits = ApiLimits(dicomweb_rate_per_key=unlimited, dicomweb_rate_per_address=unlimited)
        app = create_app(
            pool, publish, CollectorRegistry(), Readiness(), limits=limits, dicomweb=ports
        )
        port = free_port()
        server = http_server(app, "127.0.0.1", port)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        base = f"http://127.0.0.1:{port}/dicom-web"
        auth = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(headers=auth, timeout=60) as client:
            print("dicomflow")
            bearer = ["-H", f"Authorization: Bearer {key}"]
            await dicomweb_figures("dicomflow", client, base, bearer, files, repeat)
            every: list[float] = []
            for label, params in QUERIES.items():

                async def qido(n: list[int] = [0], params=params) -> None:  # noqa: B006
                    n[0] += 1
                    r = await client.get(f"{base}/studies", params={**params(n[0]), "limit": "101"})
                    assert r.status_code in (200, 204), r.text

                samples = await timed(qido, repeat)
                every += samples
                ms(f"QIDO {label}", samples)
            ms("QIDO all queries", every)
        server.should_exit = True
        await task
    finally:
        renderer.close()
        await pool.close()
        conn = await asyncpg.connect(f"{PG}/postgres")
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
    if orthanc:
        await orthanc_figures(work, files, repeat)


async def orthanc_figures(work: Path, files: list[Path], repeat: int) -> None:
    if not PLUGIN.exists():
        print("Orthanc DICOMweb plugin not installed (orthanc-dicomweb): no reference figures")
        return
    root = work / "orthanc-dicomweb"
    shutil.rmtree(root, ignore_errors=True)
    orthanc = Orthanc(root, extra={"Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True}})
    orthanc.start()
    try:
        async with httpx.AsyncClient(auth=orthanc.auth, timeout=120) as client:
            for path in files:
                r = await client.post(f"{orthanc.url}/instances", content=path.read_bytes())
                r.raise_for_status()
            print("Orthanc DICOMweb plugin (same files)")
            basic = ["-u", f"{orthanc.username}:{orthanc.password}"]
            await dicomweb_figures(
                "orthanc", client, f"{orthanc.url}/dicom-web", basic, files, repeat
            )

            async def qido() -> None:
                r = await client.get(
                    f"{orthanc.url}/dicom-web/studies", params={"PatientName": "Bench*"}
                )
                assert r.status_code == 200

            ms("orthanc: QIDO PatientName (1-study index)", await timed(qido, repeat))
    finally:
        orthanc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=600)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("var/bench"))
    parser.add_argument("--no-orthanc", action="store_true", help="skip the reference")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed: run deploy/dev/system-deps.sh")
    work = args.work.absolute()
    files = series_files(work / "dicomweb-series", args.instances)
    asyncio.run(bench(work, files, args.studies, args.repeat, not args.no_orthanc))


if __name__ == "__main__":
    main()
