"""One round of the dcm4chee watcher: read the studies changed since the watermark and
either index their metadata (metadata mode) or hand their files to the pipeline (full mode).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client import Counter as Metric

from libs.contracts.events import Event, StudySnapshot, discovered_event, metadata_event
from libs.db.dcm4chee import SOURCE, FoundFile, Watermark
from libs.db.index import SeriesSummary
from libs.db.ledger import LedgerRow
from libs.dicom.uids import is_valid_uid
from libs.runtime.logging import get_logger
from libs.runtime.periodic import AT_ONCE, After, Exclusive
from services.dcm4chee_watcher.archive import ArchiveFile, ArchiveStudy
from services.dcm4chee_watcher.files import NO_RETRIEVE, resolve

log = get_logger(__name__)

Publish = Callable[[Sequence[Event]], Awaitable[None]]
Announce = Callable[[StudySnapshot], Awaitable[None]]


class ArchivePort(Protocol):
    async def changed_studies(
        self, after: Watermark, *, settle_seconds: float, limit: int
    ) -> list[ArchiveStudy]: ...
    async def files(self, study_pks: Sequence[int]) -> dict[int, list[ArchiveFile]]: ...
    async def existing(self, study_uids: Sequence[str]) -> set[str]: ...


class StatePort(Protocol):
    async def watermark(self) -> Watermark: ...
    async def advance(self, to: Watermark) -> None: ...
    async def emitted(self, study_uids: Sequence[str]) -> set[str]: ...
    async def index_study(
        self, study: ArchiveStudy, series: list[SeriesSummary], announce: Announce
    ) -> None: ...
    async def record_round(
        self, files: Sequence[FoundFile], to: Watermark, studies: Sequence[str]
    ) -> list[LedgerRow]: ...
    async def studies_to_check(self, limit: int) -> list[str]: ...
    async def record_check(self, present: Sequence[str], gone: Sequence[str]) -> list[str]: ...


@dataclass
class RoundReport:
    studies: int = 0
    indexed: int = 0
    emitted: int = 0
    unreachable: int = 0
    to_fetch: int = 0  # unreachable here, to be fetched by C-MOVE


def summarize(files: list[ArchiveFile]) -> list[SeriesSummary]:
    """Series with their instance counts and sizes, in the archive's order."""
    series: dict[str, SeriesSummary] = {}
    for f in files:
        s = series.get(f.series.series_uid)
        count, size = (s.instance_count, s.size_bytes) if s else (0, 0)
        series[f.series.series_uid] = SeriesSummary(f.series, count + 1, size + f.size)
    return list(series.values())


async def metadata_round(
    archive: ArchivePort,
    state: StatePort,
    publish: Publish,
    *,
    settle_seconds: float,
    limit: int,
) -> RoundReport:
    """Each changed study is indexed and announced in its own transaction with the watermark,
    which commits only after the broker acknowledged the announcement."""
    report = RoundReport()
    studies = await archive.changed_studies(
        await state.watermark(), settle_seconds=settle_seconds, limit=limit
    )
    files = await archive.files([s.pk for s in studies])
    for study in studies:
        report.studies += 1
        series = summarize(files[study.pk])
        if not is_valid_uid(study.study.study_uid) or not series:
            log.warning("study skipped: no instances or invalid UID", study_pk=study.pk)
            await state.advance(study.watermark)
            continue

        async def announce(snapshot: StudySnapshot) -> None:
            await publish([metadata_event(snapshot, [], source=SOURCE)])

        await state.index_study(study, series, announce)
        report.indexed += 1
    return report


async def full_round(
    archive: ArchivePort,
    state: StatePort,
    publish: Publish,
    *,
    roots: dict[str, Path],
    settle_seconds: float,
    limit: int,
    source: str,
    retrieve: bool = False,
) -> RoundReport:
    """New instances of the changed studies go to the pipeline in one import task; the ones
    whose file is not reachable here are fetched by C-MOVE when `retrieve` (their ledger rows
    stay pending until then, `moves.py`), else recorded as failed with the reason."""
    report = RoundReport()
    studies = await archive.changed_studies(
        await state.watermark(), settle_seconds=settle_seconds, limit=limit
    )
    if not studies:
        return report
    files_of = await archive.files([s.pk for s in studies])
    done = await state.emitted([s.study.study_uid for s in studies])
    found: dict[str, FoundFile] = {}
    for study in studies:
        report.studies += 1
        new = [
            f
            for f in files_of[study.pk]
            if f.sop_instance_uid not in done and f.sop_instance_uid not in found
        ]
        # Path checks stat the archive's filesystem: in a thread, once per study.
        sizes = _sizes(files_of[study.pk])
        for ff in await asyncio.to_thread(_found_all, study, new, roots, source, retrieve, sizes):
            found.setdefault(ff.sop_instance_uid, ff)
    files = _unique_uris(list(found.values()))
    uids = [s.study.study_uid for s in studies]
    rows = await state.record_round(files, studies[-1].watermark, uids)
    await publish([discovered_event(r) for r in rows])
    report.emitted = len(rows)
    report.unreachable = sum(1 for f in files if f.reason and not f.retrieve)
    report.to_fetch = sum(1 for f in files if f.retrieve)
    return report


async def deletion_round(archive: ArchivePort, state: StatePort, *, limit: int) -> list[str]:
    """Up to `limit` of the studies taken from the archive, checked longest ago: those it
    no longer has are marked deleted at the source in our index (our copy stays). Returns
    the studies newly found gone."""
    uids = await state.studies_to_check(limit)
    if not uids:
        return []
    present = await archive.existing(uids)
    gone = [u for u in uids if u not in present]
    newly = await state.record_check(sorted(present), gone)
    for uid in newly:
        log.warning("study deleted from the archive; kept and marked in the index", study=uid)
    return newly


def _found_all(
    study: ArchiveStudy,
    files: list[ArchiveFile],
    roots: dict[str, Path],
    source: str,
    retrieve: bool,
    sizes: Counter[str],
) -> list[FoundFile]:
    return [_found(study, f, roots, source, retrieve, sizes) for f in files]


def _sizes(files: list[ArchiveFile]) -> Counter[str]:
    """Instances per series of a study in the archive, and of the whole study under ""."""
    sizes = Counter(f.series.series_uid for f in files)
    sizes[""] = len(files)
    return sizes


def _found(
    study: ArchiveStudy,
    f: ArchiveFile,
    roots: dict[str, Path],
    source: str,
    retrieve: bool,
    sizes: Counter[str],
) -> FoundFile:
    origin = f"{source}: {f.storage}/{f.path}" if f.path else f"{source}: {f.sop_instance_uid}"
    where = resolve(f, roots)
    if isinstance(where, Path):
        return FoundFile(
            study.study.study_uid,
            f.sop_instance_uid,
            where.as_uri(),
            origin,
            where.stat().st_size,
        )
    uri = f"dcm4chee://{source}/{study.study.study_uid}/{f.sop_instance_uid}"
    return FoundFile(
        study.study.study_uid,
        f.sop_instance_uid,
        uri,
        origin,
        f.size,
        where if retrieve else f"{where} ({NO_RETRIEVE})",
        retrieve=retrieve,
        series_uid=f.series.series_uid,
        series_size=sizes[f.series.series_uid],
        study_size=sizes[""],
    )


def _unique_uris(files: list[FoundFile]) -> list[FoundFile]:
    """Two instances the archive maps to one file: the file goes to the pipeline once."""
    seen: set[str] = set()
    out = []
    for f in files:
        if f.uri not in seen:
            seen.add(f.uri)
            out.append(f)
    return out


async def check_deletions(
    archive: ArchivePort, state: StatePort, lock: Exclusive, gone: Metric, batch_size: int
) -> After | None:
    """A batch of the known studies (checked longest ago first) against the archive, by one
    replica; the next batch at the next interval."""
    async with lock.held() as mine:
        if not mine:
            return None
        newly = await deletion_round(archive, state, limit=batch_size)
    gone.inc(len(newly))
    return None


@dataclass(frozen=True)
class WatchMetrics:
    rounds: Metric
    studies: Metric
    unreachable: Metric


async def watch_round(
    one_round: Callable[[], Awaitable[RoundReport]],
    lock: Exclusive,
    metrics: WatchMetrics,
    mode: str,
    batch_size: int,
) -> After | None:
    """One round if this replica holds the archive's lock; a failed round is repeated from
    the watermark. A full batch means more is waiting: go on at once."""
    report = RoundReport()
    try:
        async with lock.held() as mine:
            if mine:
                report = await one_round()
    except Exception:
        metrics.rounds.labels("failed").inc()
        raise
    metrics.rounds.labels("ok").inc()
    if report.studies:
        metrics.studies.labels(mode).inc(report.studies)
        metrics.unreachable.inc(report.unreachable)
        log.info("archive round", **vars(report))
    return AT_ONCE if report.studies >= batch_size else None
