"""`make bench`, dcm4chee watcher: reading a dcm4chee-arc-light 5.35 archive on MariaDB.

1. Builds a throw-away archive database (the 5.35 DDL) with `--studies` studies of
   `--instances` instances each, rows as the archive writes them, a small file per instance.
2. Reference, in this run: the `mariadb` command-line client running the SELECTs the watcher
   runs (all changed studies, then each study's instance query): the cost of the reads alone.
3. The watcher's metadata rounds (reads, index writes, one event per study into a counting
   publisher) and full-mode rounds (reads, path checks, import task + ledger rows) against a
   fresh dicomflow database, in batches of 50 studies.

Not a test: figures vary with the machine; compare the ratios across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg

from libs.contracts.events import Event
from libs.db.migrations import migrate
from libs.db.pool import create_pool
from libs.dicom.synthetic import synthetic_uid
from load_test.dcm4chee_archive import MARIADB, Instance, close_archive, open_archive
from services.dcm4chee_watcher.archive import _CHANGED_ARC5, _FILES_ARC5, Archive
from services.dcm4chee_watcher.bootstrap import PgState
from services.dcm4chee_watcher.connections import connect_archive
from services.dcm4chee_watcher.rounds import full_round, metadata_round

PG = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
T0 = datetime(2024, 1, 1)


class Counting:
    def __init__(self) -> None:
        self.events = 0

    async def publish(self, events: Sequence[Event]) -> None:
        self.events += len(events)


def literal(sql: str, *args: object) -> str:
    """The watcher's SQL with its arguments inlined, for the command-line client."""
    for n, value in reversed(list(enumerate(args, 1))):
        text = f"'{value}'" if isinstance(value, datetime) else str(value)
        sql = sql.replace(f"${n}", text)
    return sql.strip().rstrip(";") + ";"


async def fill(archive, root: Path, studies: int, per_study: int) -> None:  # type: ignore[no-untyped-def]
    for s in range(studies):
        when = T0 + timedelta(seconds=s // 3)  # runs of three equal timestamps
        pk = await archive.writer.add_study(
            patient_id=f"B{s}",
            patient_name=f"BENCH^{s}",
            study_uid=synthetic_uid(f"bench-study-{s}"),
            description="bench",
            when=when,
        )
        for i in range(per_study):
            sop = synthetic_uid(f"bench-sop-{s}-{i}")
            path = f"{s}/{i}.dcm"
            (root / str(s)).mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(b"\0" * 1024)
            series = synthetic_uid(f"bench-series-{s}-{i % 2}")
            await archive.writer.add_instance(pk, Instance(series, sop, "fs1", path, 1024), when)


def reference(db_name: str, studies: int) -> float:
    script = [literal(_CHANGED_ARC5, T0 + timedelta(days=3650), T0, T0, 0, studies)]
    script += [literal(_FILES_ARC5.format(pks="$1"), pk) for pk in range(1, studies + 1)]
    client = shutil.which("mariadb") or shutil.which("mysql")
    assert client, "the mariadb client is needed (Debian: mariadb-client)"
    t = time.perf_counter()
    subprocess.run(
        [
            client,
            "-h",
            MARIADB["host"],
            "-P",
            str(MARIADB["port"]),
            "-u",
            MARIADB["user"],
            "-N",
            "-B",
            db_name,
        ],
        input="\n".join(script).encode(),
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - t


async def rounds(url: str, dialect: str, pool: asyncpg.Pool, mode: str, root: Path) -> float:
    db = await connect_archive(url, dialect, size=2)
    archive, state, out = Archive(db, "arc5"), PgState(pool, f"bench-{mode}"), Counting()
    t = time.perf_counter()
    try:
        while True:
            if mode == "metadata":
                report = await metadata_round(
                    archive, state, out.publish, settle_seconds=0, limit=50
                )
            else:
                report = await full_round(
                    archive,
                    state,
                    out.publish,
                    roots={"fs1": root},
                    settle_seconds=0,
                    limit=50,
                    source="bench",
                )
            if report.studies == 0:
                return time.perf_counter() - t
    finally:
        await db.close()


def line(label: str, seconds: float, studies: int, instances: int) -> None:
    print(
        f"  {label:<44} {studies / seconds:>8.0f} studies/s {instances / seconds:>9.0f} inst/s"
        f"  ({seconds:.2f}s)"
    )


async def main(studies: int, per_study: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="dicomflow-bench-dcm4chee-"))
    archive = await open_archive("arc5-mariadb")
    name = f"dicomflow_bench_{uuid.uuid4().hex[:8]}"
    try:
        t = time.perf_counter()
        await fill(archive, work / "fs1", studies, per_study)
        print(
            f"archive: {studies} studies x {per_study} instances "
            f"(built in {time.perf_counter() - t:.1f}s)"
        )
        instances = studies * per_study
        line(
            "reference: mariadb client, same SELECTs",
            reference(archive.name, studies),
            studies,
            instances,
        )
        pool = await create_pool(f"{PG}/{name}", size=4)
        try:
            await migrate(pool)
            for mode in ("metadata", "full"):
                seconds = await rounds(archive.url, archive.dialect, pool, mode, work / "fs1")
                line(f"dcm4chee-watcher, {mode} mode", seconds, studies, instances)
        finally:
            await pool.close()
            admin = await asyncpg.connect(f"{PG}/postgres")
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    finally:
        await close_archive(archive)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--studies", type=int, default=int(os.environ.get("BENCH_DCM4CHEE_STUDIES", 300))
    )
    parser.add_argument("--instances", type=int, default=10, help="instances per study")
    args = parser.parse_args()
    asyncio.run(main(args.studies, args.instances))
