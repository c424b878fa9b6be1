"""Files the watcher cannot read are fetched from the archive's DICOM side by C-MOVE to our
receiver, and each copy's outcome is written on the ledger row its round recorded.

A round, by one replica per archive:
1. instances still to fetch of a cancelled import end `cancelled`;
2. moved instances whose copy reached an outcome get it on their own row (`link`);
3. for up to `studies` studies with instances to fetch: a C-FIND at IMAGE level per series
   tells which the archive has (the others fail: "not on the archive's DICOM side"), then
   C-MOVE, at STUDY level when every instance of the study is to be fetched, SERIES level
   for a whole series, else IMAGE level keyed by the SOP Instance UIDs (a list, so only the
   missing ones are sent). Sub-operations the archive reports failed fail their instance.

Before each study and each C-MOVE, the instances' tasks are asked again: those of a task
paused or cancelled meanwhile are left as they are (what is left of the study is planned
again without them); a paused task's wait until it is resumed (`due` takes running tasks'
only), a cancelled task's end `cancelled` at the next round (step 1).

An archive whose DICOM side is away (refused connection, timeout, aborted association, out
of resources) is waited for: nothing is counted against its instances, and rounds back off
up to `max_backoff`. A refusal it would repeat (unknown move destination, our AE not
allowed) counts an attempt; after `max_attempts` the instances fail with the reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Protocol

from prometheus_client import Counter as Metric

from libs.db.dcm4chee_moves import Awaiting
from libs.dicom_net.models import Level, Match, Query, RetrieveResult
from libs.dicom_net.retry import retry_delay, transient
from libs.runtime.logging import get_logger
from libs.runtime.periodic import After, Exclusive

log = get_logger(__name__)
UIDS_PER_MOVE = 100  # an IMAGE-level identifier's SOP Instance UID list (65 bytes each)


class ArchiveScu(Protocol):
    async def find(self, query: Query) -> list[Match]: ...
    async def move(self, query: Query, destination: str) -> RetrieveResult: ...


class MoveState(Protocol):
    async def cancel_stopped(self) -> int: ...
    async def stopped_tasks(self, task_ids: Collection[str]) -> set[str]:
        """Of these tasks, the ones paused, cancelled or ended (nothing more is fetched)."""

    async def link(self, timeout_seconds: float) -> Counter[str]: ...
    async def due(self, studies: int) -> list[Awaiting]: ...
    async def start(self, sop_uids: Sequence[str]) -> None: ...
    async def moved(self, sop_uids: Sequence[str]) -> None: ...
    async def defer(
        self, sop_uids: Sequence[str], *, error: str, delay: float, count: bool
    ) -> None: ...
    async def fail(self, failures: Sequence[tuple[str, str]]) -> int: ...


@dataclass(frozen=True)
class MovePolicy:
    archive_ae: str
    destination: str
    studies: int = 10
    max_attempts: int = 5
    backoff: float = 30.0
    max_backoff: float = 900.0
    link_timeout: float = 3600.0
    interval: float = 5.0


@dataclass
class MoveReport:
    studies: int = 0
    moved: int = 0  # instances the archive said it sent
    failed: int = 0  # instances failed here (not on the archive, not sent, refused)
    cancelled: int = 0
    held: int = 0  # instances left for a task paused or cancelled during the round
    linked: Counter[str] = field(default_factory=Counter)  # outcomes written, by status
    away: str | None = None  # the archive's DICOM side is away: why


class Mover:
    """Fetches one archive's unreachable instances; `round` is registered with the runtime."""

    def __init__(self, state: MoveState, scu: ArchiveScu, policy: MovePolicy) -> None:
        self.state = state
        self.scu = scu
        self.policy = policy
        self.delay = policy.interval  # grows while the archive is away

    async def round(self) -> MoveReport:
        p = self.policy
        report = MoveReport()
        report.cancelled = await self.state.cancel_stopped()
        report.linked = await self.state.link(p.link_timeout)
        due = await self.state.due(p.studies)
        for study_uid, group in groupby(due, key=lambda a: a.study_uid):
            items = await self._going_on(list(group), report)
            if not items:
                continue
            report.studies += 1
            handled: set[str] = set()  # failed or moved already, when a later call fails
            try:
                await self._study(study_uid, items, handled, report)
            except Exception as exc:
                if transient(exc):  # away: wait for it, the other studies too
                    report.away = str(exc) or repr(exc)
                    log.warning(
                        "archive's DICOM side away; waiting",
                        archive=p.archive_ae,
                        study_uid=study_uid,
                        error=report.away,
                    )
                    break
                await self._refused(study_uid, items, handled, exc, report)
        self.delay = (
            min(p.max_backoff, max(p.interval, self.delay * 2)) if report.away else p.interval
        )
        return report

    def after(self) -> After:
        return After(self.delay)

    async def _study(
        self, study_uid: str, items: list[Awaiting], handled: set[str], report: MoveReport
    ) -> None:
        p = self.policy
        present: set[str] = set()
        for series_uid in {a.series_uid for a in items}:
            query = Query(level=Level.IMAGE, study_uid=study_uid, series_uid=series_uid)
            present |= {m.sop_instance_uid for m in await self.scu.find(query)}
        absent = [a for a in items if a.sop_instance_uid not in present]
        if absent:
            why = f"the archive's DICOM side ({p.archive_ae}) does not have it either (C-FIND)"
            report.failed += await self._fail([(a, f"{a.reason}; {why}") for a in absent])
            handled.update(a.sop_instance_uid for a in absent)
        todo = [a for a in items if a.sop_instance_uid in present]
        if not todo:
            return
        await self.state.start([a.sop_instance_uid for a in todo])
        requests = list(plan(study_uid, todo))
        while requests:
            left = [a for _, b in requests for a in b]
            going = await self._going_on(left, report)
            if len(going) < len(left):  # a task stopped: the rest planned again without it
                kept = {a.sop_instance_uid for a in going}
                handled.update(a.sop_instance_uid for a in left if a.sop_instance_uid not in kept)
                requests = list(plan(study_uid, going)) if going else []
                continue
            query, batch = requests.pop(0)
            result = await self.scu.move(query, p.destination)
            refused = set(result.failed_sop_instance_uids)
            failed = [a for a in batch if a.sop_instance_uid in refused]
            why = f"the archive could not send it by C-MOVE (status 0x{result.status:04X})"
            report.failed += await self._fail([(a, f"{a.reason}; {why}") for a in failed])
            sent = [a.sop_instance_uid for a in batch if a.sop_instance_uid not in refused]
            await self.state.moved(sent)
            handled.update(a.sop_instance_uid for a in batch)
            report.moved += len(sent)
            log.info(
                "instances moved",
                archive=p.archive_ae,
                study_uid=study_uid,
                level=query.level.value,
                asked=len(batch),
                completed=result.completed,
                failed=result.failed,
                task_ids=sorted({a.task_id for a in batch}),
            )

    async def _going_on(self, items: list[Awaiting], report: MoveReport) -> list[Awaiting]:
        """The instances whose task may still fetch (running): not paused or cancelled."""
        stopped = await self.state.stopped_tasks({a.task_id for a in items})
        going = [a for a in items if a.task_id not in stopped]
        if stopped:
            report.held += len(items) - len(going)
            log.info("fetches held: task paused or cancelled", task_ids=sorted(stopped))
        return going

    async def _refused(
        self,
        study_uid: str,
        items: list[Awaiting],
        handled: set[str],
        exc: Exception,
        report: MoveReport,
    ) -> None:
        """A refusal the archive would repeat: an attempt counted, failed after the last."""
        p = self.policy
        attempts = max(a.attempts for a in items) + 1
        error = f"C-MOVE from {p.archive_ae} refused: {exc}"
        pending = [a for a in items if a.sop_instance_uid not in handled]
        if attempts >= p.max_attempts:
            reason = f"{error} ({attempts} attempts)"
            report.failed += await self._fail([(a, f"{a.reason}; {reason}") for a in pending])
            return
        delay = retry_delay(attempts, base=p.backoff, ceiling=p.max_backoff)
        log.warning(
            "C-MOVE refused; trying again later",
            archive=p.archive_ae,
            study_uid=study_uid,
            error=error,
            attempts=attempts,
            retry_in=delay,
        )
        uids = [a.sop_instance_uid for a in pending]
        await self.state.defer(uids, error=error, delay=delay, count=True)

    async def _fail(self, failures: list[tuple[Awaiting, str]]) -> int:
        for a, reason in failures:  # every failure logged, with its file's correlation id
            log.warning(
                "archive instance not fetched",
                correlation_id=a.correlation_id,
                task_id=a.task_id,
                sop_instance_uid=a.sop_instance_uid,
                reason=reason,
            )
        if not failures:
            return 0
        return await self.state.fail([(a.sop_instance_uid, reason) for a, reason in failures])


def plan(study_uid: str, todo: list[Awaiting]) -> Iterator[tuple[Query, list[Awaiting]]]:
    """The C-MOVE requests for these instances of one study: the whole study, whole series,
    or IMAGE level with lists of SOP Instance UIDs (only those are sent)."""
    if todo[0].study_size and len(todo) >= todo[0].study_size:
        yield Query(level=Level.STUDY, study_uid=study_uid), todo
        return
    for series_uid, group in groupby(
        sorted(todo, key=lambda a: a.series_uid), lambda a: a.series_uid
    ):
        items = list(group)
        if items[0].series_size and len(items) >= items[0].series_size:
            yield Query(level=Level.SERIES, study_uid=study_uid, series_uid=series_uid), items
            continue
        for n in range(0, len(items), UIDS_PER_MOVE):
            chunk = items[n : n + UIDS_PER_MOVE]
            query = Query(
                level=Level.IMAGE,
                study_uid=study_uid,
                series_uid=series_uid,
                sop_instance_uid="\\".join(a.sop_instance_uid for a in chunk),
            )
            yield query, chunk


@dataclass(frozen=True)
class MoveMetrics:
    rounds: Metric
    moved: Metric
    outcomes: Metric


async def move_round(mover: Mover, lock: Exclusive, metrics: MoveMetrics) -> After | None:
    """One fetch round if this replica holds the archive's fetch lock."""
    try:
        async with lock.held() as mine:
            if not mine:
                return None
            report = await mover.round()
    except Exception:
        metrics.rounds.labels("failed").inc()
        raise
    metrics.rounds.labels("archive_away" if report.away else "ok").inc()
    metrics.moved.inc(report.moved)
    metrics.outcomes.labels("not_fetched").inc(report.failed)
    metrics.outcomes.labels("cancelled").inc(report.cancelled)
    for status, n in report.linked.items():
        metrics.outcomes.labels(status).inc(n)
    if report.studies or report.linked or report.cancelled or report.held:
        log.info(
            "fetch round",
            studies=report.studies,
            moved=report.moved,
            not_fetched=report.failed,
            cancelled=report.cancelled,
            held=report.held,
            linked=dict(report.linked),
            archive_away=report.away,
        )
    return mover.after()
