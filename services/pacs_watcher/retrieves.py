"""On-demand retrieves (`POST /v1/retrieve`): one worker per PACS leases that PACS's
retrieve tasks, one at a time, and runs each through the poller's `PacsWatch` (the same
DICOM client and the same per-PACS semaphore, so poller and humans together never hold more
than `max_concurrent` associations to it).

The night window does not apply: a person asked and is waiting (a prior study for a patient
seen today), and the load stays bounded by `max_concurrent` and by
`WATCHER_RETRIEVE_MAX_STUDIES` per request. The poller's bulk catch-up still waits for the
window.

A PACS that is away (refused connection, timeout, aborted association, out of resources)
puts the task back with a delay (`WATCHER_RETRIEVE_BACKOFF_SECONDS`, doubling up to
`WATCHER_MAX_BACKOFF_SECONDS`) until `WATCHER_RETRIEVE_MAX_ATTEMPTS` attempts have failed;
then, or at once for a refusal it would repeat, the task fails with the reason. Studies
already retrieved are not asked again when a task resumes.

A paused or cancelled task (either clears the lease) stops before its next study's C-MOVE or
C-GET, asked once this PACS's slot is held; the studies in flight finish. A paused task is
not leased again until resumed; then its studies not retrieved yet are. A cancelled one
stops for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import partial

import asyncpg

from libs.db import ledger, task_control, tasks
from libs.db import pacs as pacs_db
from libs.db import retrieves as db
from libs.db.retrieves import StudyRow
from libs.dicom_net.models import Progress
from libs.dicom_net.requests import RetrieveRequest
from libs.dicom_net.retry import retry_delay
from libs.runtime.logging import get_logger
from libs.runtime.periodic import AT_ONCE, After, meanwhile
from services.pacs_watcher.policy import Failed, give_up, plan, too_many
from services.pacs_watcher.poller import PacsWatch

log = get_logger(__name__)
PROGRESS_SECONDS = 1.0


class OnDemand:
    def __init__(self, watch: PacsWatch, pool: asyncpg.Pool, owner: str) -> None:
        self.watch = watch
        self.pool = pool
        self.owner = owner
        self.settings = watch.settings

    async def lease_round(self) -> After | None:
        """Lease this PACS's next retrieve task and run it; at once again after a task, the
        usual interval when there is none (or the database is away)."""
        try:
            async with self.pool.acquire() as conn:
                leased = await db.lease_next(
                    conn,
                    pacs=self.watch.pacs.name,
                    owner=self.owner,
                    lease_seconds=self.settings.retrieve_lease_seconds,
                )
        except Exception as exc:  # database away: try again shortly
            log.warning("cannot lease retrieve tasks", error=repr(exc))
            return None
        if leased is None:
            return None
        task, retrieve = leased
        lease = self.settings.retrieve_lease_seconds
        try:
            async with meanwhile("retrieve-lease", lease / 3, partial(self._renew, task.id)):
                await self.attempt(task.id, retrieve)
        except Exception as exc:  # recording the outcome failed: the lease expires, and
            log.warning("retrieve outcome not recorded", task_id=task.id, error=repr(exc))
            return None  # the task is run again
        return AT_ONCE

    async def attempt(self, task_id: str, retrieve: db.Retrieve) -> None:
        """One attempt at a leased task; decides what a failure means for it."""
        s = self.settings
        log.info(
            "retrieve started", task_id=task_id, pacs=retrieve.pacs, attempt=retrieve.attempts + 1
        )
        try:
            await self._run(task_id, retrieve)
        except Exception as raised:
            exc = _first(raised)
            if isinstance(exc, asyncpg.PostgresError):  # our database, not the PACS: again
                await self._defer(task_id, repr(exc), s.retrieve_backoff_seconds, count=False)
                return
            attempts = retrieve.attempts + 1
            reason = give_up(
                exc, pacs=retrieve.pacs, attempts=attempts, max_attempts=s.retrieve_max_attempts
            )
            if reason is not None:
                await self._fail(task_id, reason, attempts=attempts)
                return
            delay = retry_delay(
                attempts, base=s.retrieve_backoff_seconds, ceiling=s.max_backoff_seconds
            )
            log.warning("retrieve deferred", task_id=task_id, error=str(exc), retry_in=delay)
            await self._defer(task_id, str(exc), delay, count=True)

    async def _run(self, task_id: str, retrieve: db.Retrieve) -> None:
        if not retrieve.found:
            await self._find(task_id, RetrieveRequest.model_validate(retrieve.request))
        async with self.pool.acquire() as conn:
            todo = [
                s for s in await db.studies(conn, task_id) if s.status in ("pending", "retrieving")
            ]
        async with asyncio.TaskGroup() as group:
            runs = [group.create_task(self._study(task_id, study)) for study in todo]
        left = sum(not run.result() for run in runs)
        if left:  # paused or cancelled: the studies left wait for a resume (or never run)
            log.info("retrieve stopped", task_id=task_id, studies_left=left)
            return
        async with self.pool.acquire() as conn:
            completed = await ledger.finish_task_scan(conn, task_id)
        log.info("retrieve finished", task_id=task_id, studies=len(todo), completed=completed)

    async def _find(self, task_id: str, request: RetrieveRequest) -> None:
        matches = await self.watch.client.find(request.find_query())
        if request.study_uid is not None and not matches:
            raise Failed(f"study {request.study_uid} not found on PACS {request.pacs}")
        async with self.pool.acquire() as conn:
            indexed = await pacs_db.indexed_counts(conn, [m.study_uid for m in matches])
        todo, skipped = plan(matches, indexed)
        reason = too_many(len(todo), self.settings.retrieve_max_studies)
        if reason is not None:
            raise Failed(reason)
        rows = [StudyRow(m.study_uid, m.number_of_instances, "pending") for m in todo] + [
            StudyRow(m.study_uid, m.number_of_instances, "skipped") for m in skipped
        ]
        async with self.pool.acquire() as conn:
            await db.set_studies(conn, task_id, self.watch.pacs.retrieve, rows)
        log.info("retrieve matched", task_id=task_id, retrieve=len(todo), skipped=len(skipped))

    async def _study(self, task_id: str, study: StudyRow) -> bool:
        """Retrieves one study; False when the task stopped before it was asked for."""
        latest: dict[str, Progress] = {}  # set from the DICOM client's thread; read here
        try:
            async with self._reporting(task_id, study, latest):
                result = await self.watch.retrieve_study(
                    study.study_uid,
                    expected=study.expected,
                    task_id=task_id,
                    progress=partial(latest.__setitem__, "last"),
                    ready=partial(self._go_on, task_id),
                )
        except task_control.Stopped as stop:
            log.info("retrieve study held", task_id=task_id, study=study.study_uid, why=stop.why)
            if stop.why == task_control.LEASE_LOST:  # another watcher's now
                return False
            async with self.pool.acquire() as conn:  # not asked for: pending again
                await db.update_study(
                    conn, task_id, StudyRow(study.study_uid, study.expected, "pending")
                )
            return False
        done = StudyRow(
            study.study_uid,
            study.expected,
            "done",
            completed=result.completed,
            failed=result.failed,
            warning=result.warning,
            remaining=0,
        )
        async with self.pool.acquire() as conn:
            await db.update_study(conn, task_id, done)
        return True

    async def _go_on(self, task_id: str) -> None:
        """Raises `Stopped` when the task was paused or cancelled (or its lease taken over)."""
        async with self.pool.acquire() as conn:
            await task_control.go_on(conn, task_id, owner=self.owner)

    @contextlib.asynccontextmanager
    async def _reporting(
        self, task_id: str, study: StudyRow, latest: dict[str, Progress]
    ) -> AsyncIterator[None]:
        """While a study is retrieved, write the PACS's latest counts every second."""

        async def report() -> None:
            shown: Progress | None = None
            first = True
            while True:
                p = latest.get("last")
                if first or p is not shown:
                    first, shown = False, p
                    p = p or Progress(remaining=study.expected)
                    row = StudyRow(
                        study.study_uid,
                        study.expected,
                        "retrieving",
                        completed=p.completed,
                        failed=p.failed,
                        warning=p.warning,
                        remaining=p.remaining,
                    )
                    with contextlib.suppress(Exception):  # progress is best effort
                        async with self.pool.acquire() as conn:
                            await db.update_study(conn, task_id, row)
                await asyncio.sleep(PROGRESS_SECONDS)

        reporter = asyncio.create_task(report())
        try:
            yield
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

    async def _renew(self, task_id: str) -> None:
        """A missed renewal is retried at the next one."""
        async with self.pool.acquire() as conn:
            await tasks.renew_lease(
                conn,
                task_id,
                owner=self.owner,
                lease_seconds=self.settings.retrieve_lease_seconds,
            )

    async def _fail(self, task_id: str, error: str, *, attempts: int) -> None:
        log.warning("retrieve failed", task_id=task_id, error=error, attempts=attempts)
        async with self.pool.acquire() as conn, conn.transaction():
            await db.note_failure(conn, task_id, error, attempts=attempts)
            await tasks.fail_task(conn, task_id, error)

    async def _defer(self, task_id: str, error: str, delay: float, *, count: bool) -> None:
        with contextlib.suppress(Exception):  # else the lease expires and it is retried anyway
            async with self.pool.acquire() as conn:
                await db.defer(conn, task_id, error=error, delay_seconds=delay, count=count)


def _first(exc: BaseException) -> BaseException:
    """The first real error inside a task group's exception group."""
    return next(_leaves(exc), exc)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def owner_id() -> str:
    return f"pacs-watcher-{uuid.uuid4().hex[:12]}"
