"""The sources the kill test feeds while it kills their watchers: an Orthanc followed by the
orthanc-watcher, an upstream PACS (an Orthanc over DICOM) polled by the pacs-watcher with
C-GET, a dcm4chee archive database read by the dcm4chee-watcher; and the central index the
index-publisher delivers every study revision to."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import pydicom
from studies import write_study

from libs.tools.dev_broker import free_port
from load_test.dcm4chee_archive import ArchiveDatabase, Instance
from load_test.peers import Orthanc
from tests.integration.index_publisher.conftest import API_KEY, CENTER, Central
from tests.polling import eventually

PACS = "upstream"  # the PACS's name in WATCHER_PACS: its ledger rows are `pacs:upstream`
WATCHER_AE = "DFWATCHER"
ARCHIVE_ROOT = "fs1"


async def ledger_rows(pool: asyncpg.Pool, source: str) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM ingest_files WHERE source = $1", source))


async def all_indexed(pool: asyncpg.Pool, sops: set[str]) -> bool:
    found = await pool.fetchval(
        "SELECT count(*) FROM instances WHERE sop_instance_uid = ANY($1)", list(sops)
    )
    return bool(found == len(sops))


class Feed:
    """One source: `in_flight()` gives it a new study, waits until its watcher has begun
    taking it and says whether the study is still on its way (a kill now lands mid-delivery).
    `sources` maps every SOP instance UID fed to the file it came from."""

    service: ClassVar[str]
    ledger: ClassVar[str]  # ingest_files.source of what the watcher takes in
    over_dicom: ClassVar[bool] = False  # arrives as a dataset: compared without file meta

    def __init__(self, work: Path) -> None:
        self.work = work
        self.sources: dict[str, Path] = {}
        self.batches = 0
        self.uploads: list[asyncio.Task[None]] = []  # still going on when the watcher is killed

    async def delivered(self) -> None:
        """Every upload to the peer finished (raises what one raised)."""
        await asyncio.gather(*self.uploads)

    async def add(self, folder: Path) -> dict[str, Path]:
        raise NotImplementedError

    async def progress(self, pool: asyncpg.Pool) -> int:
        """Grows as the watcher takes work in: its ledger rows."""
        return await ledger_rows(pool, self.ledger)

    async def in_flight(self, pool: asyncpg.Pool) -> bool:
        before = await self.progress(pool)
        batch = await self.add(self.work / f"{self.service}-{self.batches}")
        self.batches += 1
        self.sources.update(batch)

        async def taking() -> bool:
            return await self.progress(pool) > before

        await eventually(taking, 120, what=f"{self.service} never took its study", interval=0.05)
        return not await all_indexed(pool, set(batch))


async def upload(peer: Orthanc, files: list[Path]) -> None:
    """Four at a time, in threads: the watcher begins taking the study while it arrives."""
    lanes = asyncio.Semaphore(4)

    async def one(path: Path) -> None:
        async with lanes:
            await asyncio.to_thread(peer.upload, path)

    await asyncio.gather(*(one(p) for p in files))


class OrthancFeed(Feed):
    service, ledger = "orthanc-watcher", "orthanc"

    def __init__(self, work: Path, orthanc: Orthanc) -> None:
        super().__init__(work)
        self.orthanc = orthanc

    async def add(self, folder: Path) -> dict[str, Path]:
        study = write_study(folder, patient="Orthanc^Fed", series=2, per_series=30)
        self.uploads.append(asyncio.create_task(upload(self.orthanc, list(study.values()))))
        return study


class PacsFeed(Feed):
    """Studies of today (inside the watcher's window) uploaded to the PACS, retrieved by the
    watcher with C-GET: the datasets arrive over DICOM, in the watcher's own files."""

    service, ledger, over_dicom = "pacs-watcher", f"pacs:{PACS}", True

    def __init__(self, work: Path, pacs: Orthanc, staging: Path) -> None:
        super().__init__(work)
        self.pacs = pacs
        self.staging = staging / PACS  # one folder per C-GET, made as it begins
        self.gets: set[str] = set()

    async def progress(self, pool: asyncpg.Pool) -> int:
        """A C-GET begun counts: the kill then lands during the C-GET or just after it."""
        if self.staging.is_dir():
            self.gets.update(p.name for p in self.staging.iterdir())
        return len(self.gets) + await ledger_rows(pool, self.ledger)

    async def add(self, folder: Path) -> dict[str, Path]:
        today = date.today().strftime("%Y%m%d")
        study = write_study(folder, patient="Pacs^Fed", per_series=40, study_date=today)
        self.uploads.append(asyncio.create_task(upload(self.pacs, list(study.values()))))
        return study


class ArchiveFeed(Feed):
    """A study written to the archive's filesystem and database as dcm4chee stores it: its
    rows in one transaction, so the watcher never sees an instance without its file."""

    service, ledger = "dcm4chee-watcher", "dcm4chee"
    T0 = datetime(2024, 3, 1, 8, 0, 0)

    def __init__(self, work: Path, archive: ArchiveDatabase) -> None:
        super().__init__(work)
        self.archive = archive
        self.root = work / "dcm4chee-fs1"

    async def add(self, folder: Path) -> dict[str, Path]:
        rel = folder.name
        study = write_study(self.root / rel, patient="Archive^Fed", series=2, per_series=30)
        first = pydicom.dcmread(next(iter(study.values())), stop_before_pixels=True)
        when = self.T0 + timedelta(minutes=self.batches)
        writer, sql = self.archive.writer, self.archive.sql
        await sql.execute("START TRANSACTION")
        try:
            pk = await writer.add_study(
                patient_id=str(first.PatientID),
                patient_name=str(first.PatientName),
                study_uid=str(first.StudyInstanceUID),
                description="fed while killed",
                when=when,
            )
            for sop, path in study.items():
                series = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
                size = path.stat().st_size
                inst = Instance(series, sop, ARCHIVE_ROOT, f"{rel}/{path.name}", size)
                await writer.add_instance(pk, inst, when)
        except BaseException:
            await sql.execute("ROLLBACK")
            raise
        await sql.execute("COMMIT")
        return study


@dataclass
class PublisherFeed:
    """The index-publisher's work is every study revision the import makes: killed once the
    receiver got a new request, in flight while some study's final state is not there yet."""

    central: Central
    service: ClassVar[str] = "index-publisher"
    seen: int = 0
    sources: dict[str, Path] = field(default_factory=dict)

    async def in_flight(self, pool: asyncpg.Pool) -> bool:
        def more() -> bool:
            with self.central.lock:
                return len(self.central.requests) > self.seen

        await eventually(more, 120, what="the index-publisher sent nothing new", interval=0.05)
        with self.central.lock:
            self.seen = len(self.central.requests)
        return bool(await publications_behind(pool, self.central))


@dataclass
class Peers:
    orthanc: Orthanc
    pacs: Orthanc
    archive: ArchiveDatabase
    central: Central
    ca_bundle: Path
    feeds: dict[str, Feed | PublisherFeed]

    @classmethod
    def create(
        cls, work: Path, archive: ArchiveDatabase, central: Central, ca_bundle: Path
    ) -> Peers:
        """Peers with their files under `work`; `env()` configures the services on them."""
        orthanc = Orthanc(work / "orthanc")
        pacs = Orthanc(
            work / "pacs",
            aet="PACS",
            modalities={"watcher": (WATCHER_AE, "127.0.0.1", free_port())},
        )
        feeds: list[Feed | PublisherFeed] = [
            OrthancFeed(work, orthanc),
            PacsFeed(work, pacs, work / "pacs-get"),
            ArchiveFeed(work, archive),
            PublisherFeed(central),
        ]
        return cls(orthanc, pacs, archive, central, ca_bundle, {f.service: f for f in feeds})

    def env(self) -> dict[str, str]:
        """The four services configured on these peers."""
        archive, pacs_feed = self.feeds["dcm4chee-watcher"], self.feeds["pacs-watcher"]
        assert isinstance(archive, ArchiveFeed) and isinstance(pacs_feed, PacsFeed)
        pacs = {"name": PACS, "ae_title": "PACS", "host": "127.0.0.1", "retrieve": "get"}
        return {
            "ORTHANC_URL": self.orthanc.url,
            "ORTHANC_USERNAME": self.orthanc.username,
            "ORTHANC_PASSWORD": self.orthanc.password,
            "WATCHER_PACS": json.dumps([{**pacs, "port": self.pacs.dicom_port}]),
            "WATCHER_CALLING_AE": WATCHER_AE,
            "WATCHER_POLL_INTERVAL_SECONDS": "1",
            "WATCHER_LOOKBACK_DAYS": "2",
            "WATCHER_STAGING_DIR": str(pacs_feed.staging.parent),
            "WATCHER_NIGHT_WINDOW": "",
            "DCM4CHEE_ARCHIVE_URL": self.archive.url,
            "DCM4CHEE_MODE": "full",
            "DCM4CHEE_NAME": "kill-archive",
            "DCM4CHEE_STORAGE_ROOTS": f"{ARCHIVE_ROOT}={archive.root}",
            "DCM4CHEE_POLL_INTERVAL_SECONDS": "0.5",
            "DCM4CHEE_SETTLE_SECONDS": "0",
            "INDEX_PUBLISHER_URL": self.central.url,
            "INDEX_PUBLISHER_CENTER": CENTER,
            "INDEX_PUBLISHER_API_KEY": API_KEY,
            "INDEX_PUBLISHER_CA_BUNDLE": str(self.ca_bundle),
            "INDEX_PUBLISHER_BACKOFF_SECONDS": "0.05",
            "INDEX_PUBLISHER_MAX_BACKOFF_SECONDS": "0.5",
        }

    async def delivered(self) -> None:
        for feed in self.feeds.values():
            if isinstance(feed, Feed):
                await feed.delivered()

    def sources(self) -> dict[str, Path]:
        return {sop: p for f in self.feeds.values() for sop, p in f.sources.items()}

    def sent(self) -> set[str]:
        return {s for f in self.feeds.values() if isinstance(f, Feed) and f.over_dicom
                for s in f.sources}  # fmt: skip


async def ledger_exact(pool: asyncpg.Pool, feed: Feed) -> dict[str, Any]:
    """The source's ledger: `indexed` is each SOP instance fed exactly once (one indexed
    row each, nothing else indexed); `others` the statuses of any further rows (a study
    taken again after a kill: those must be duplicates, nothing failed or pending)."""
    rows = await pool.fetch(
        "SELECT sop_instance_uid, status FROM ingest_files WHERE source = $1", feed.ledger
    )
    indexed = sorted(r["sop_instance_uid"] for r in rows if r["status"] == "indexed")
    return {
        "indexed": indexed == sorted(feed.sources),
        "others": sorted({r["status"] for r in rows if r["status"] != "indexed"}),
        "extra": len(rows) - len(indexed),
    }


async def publications_behind(pool: asyncpg.Pool, central: Central) -> list[str]:
    """Studies whose final state the central index has not got (yet): the last revision it
    applied is not the index's, or its instance count differs. Empty once all are there."""
    rows = await pool.fetch("SELECT study_uid, revision, instance_count, stable FROM studies")
    behind = []
    for r in rows:
        uid = r["study_uid"]
        applied = central.revisions(uid)
        with central.lock:
            body = central.studies.get(uid, {})
        if (
            not r["stable"]
            or not applied
            or applied[-1] != r["revision"]
            or body.get("study_instances") != r["instance_count"]
        ):
            behind.append(f"{uid}: index r{r['revision']}, sent {applied[-3:]}")
    return behind


def resends(central: Central) -> tuple[int, list[str]]:
    """(requests answered `duplicate`, studies whose applied revisions are not strictly
    increasing). A re-send under the same idempotency key is what the publisher promises
    after a crash between the receiver's answer and its own record; an older revision
    applied after a newer one would be a broken promise."""
    with central.lock:
        duplicates = sum(1 for r in central.requests if r.status == 200)
        uids = {r.study_uid for r in central.requests}
    disorder = [u for u in uids if (rev := central.revisions(u)) != sorted(set(rev))]
    return duplicates, disorder
