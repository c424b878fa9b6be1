"""The dcm4chee watcher's C-MOVE rounds over fakes: which level each request uses, what is
waited for (an archive away), what counts an attempt (a refusal) and fails after the last,
sub-operations the archive reports failed, and tasks paused or cancelled mid-round."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace

import pytest

from libs.db.dcm4chee_moves import Awaiting
from libs.dicom_net.errors import ConnectionFailed, FailureStatus
from libs.dicom_net.models import Level, Match, Query, RetrieveResult
from services.dcm4chee_watcher.config import Dcm4cheeWatcherSettings
from services.dcm4chee_watcher.moves import UIDS_PER_MOVE, MovePolicy, Mover, plan


def awaiting(
    sop: str,
    series: str = "1.2.1",
    *,
    series_size: int = 9,
    study_size: int = 9,
    attempts: int = 0,
    task: str = "task",
) -> Awaiting:
    return Awaiting(
        sop, "1.2", series, series_size, study_size, 1, task, "corr", attempts, "file not found"
    )


@dataclass
class FakeState:
    due_now: list[Awaiting]
    started: list[str] = field(default_factory=list)
    moved_uids: list[str] = field(default_factory=list)
    deferred: list[tuple[list[str], bool]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)  # tasks paused or cancelled
    stop_on_due: set[str] = field(default_factory=set)  # paused once `due` has answered

    async def cancel_stopped(self) -> int:
        return 0

    async def stopped_tasks(self, task_ids: Collection[str]) -> set[str]:
        return self.stopped & set(task_ids)

    async def link(self, timeout_seconds: float) -> Counter[str]:
        return Counter()

    async def due(self, studies: int) -> list[Awaiting]:
        """Like the real one: still to fetch, of running tasks only."""
        done = {*self.moved_uids, *self.failed}
        due = [
            a
            for a in self.due_now
            if a.sop_instance_uid not in done and a.task_id not in self.stopped
        ]
        self.stopped |= self.stop_on_due
        return due

    async def start(self, sop_uids: Sequence[str]) -> None:
        self.started += sop_uids

    async def moved(self, sop_uids: Sequence[str]) -> None:
        self.moved_uids += sop_uids

    async def defer(
        self, sop_uids: Sequence[str], *, error: str, delay: float, count: bool
    ) -> None:
        self.deferred.append((list(sop_uids), count))

    async def fail(self, failures: Sequence[tuple[str, str]]) -> int:
        self.failed.update(failures)
        return len(failures)


@dataclass
class FakeScu:
    has: set[str]
    error: Exception | None = None
    refused: list[str] = field(default_factory=list)
    moves: list[Query] = field(default_factory=list)
    finds: int = 0
    after_move: Callable[[], None] | None = None  # e.g. a person pausing the task

    async def find(self, query: Query) -> list[Match]:
        self.finds += 1
        if self.error is not None:
            raise self.error
        return [Match(level=Level.IMAGE, sop_instance_uid=s) for s in sorted(self.has)]

    async def move(self, query: Query, destination: str) -> RetrieveResult:
        self.moves.append(query)
        if self.after_move is not None:
            self.after_move()
        return RetrieveResult(
            status=0xB000 if self.refused else 0, failed_sop_instance_uids=self.refused
        )


POLICY = MovePolicy(archive_ae="ARC", destination="DICOMFLOW", max_attempts=3, interval=5)


def test_plan_moves_a_whole_study_a_whole_series_or_only_the_listed_instances() -> None:
    whole = [awaiting(f"1.3.{n}", study_size=2, series_size=2) for n in range(2)]
    ((query, batch),) = plan("1.2", whole)
    assert (query.level, len(batch)) == (Level.STUDY, 2)

    series = [awaiting("1.3.1", "1.2.1", series_size=1), awaiting("1.3.2", "1.2.2", series_size=5)]
    levels = [(q.level, q.series_uid, q.sop_instance_uid) for q, _ in plan("1.2", series)]
    assert levels == [(Level.SERIES, "1.2.1", ""), (Level.IMAGE, "1.2.2", "1.3.2")]

    many = [awaiting(f"1.3.{n}", series_size=1000, study_size=1000) for n in range(150)]
    chunks = list(plan("1.2", many))
    assert [len(b) for _, b in chunks] == [UIDS_PER_MOVE, 50]
    identifier = chunks[1][0].retrieve_identifier()
    assert identifier.QueryRetrieveLevel == "IMAGE"
    assert list(identifier.SOPInstanceUID) == [a.sop_instance_uid for a in chunks[1][1]]


async def test_missing_and_refused_instances_fail_with_reasons_the_rest_is_moved() -> None:
    state = FakeState([awaiting("1.3.1"), awaiting("1.3.2"), awaiting("1.3.3")])
    scu = FakeScu(has={"1.3.1", "1.3.2"}, refused=["1.3.2"])
    report = await Mover(state, scu, POLICY).round()
    assert (report.moved, report.failed) == (1, 2)
    assert state.moved_uids == ["1.3.1"] and state.started == ["1.3.1", "1.3.2"]
    assert "does not have it either" in state.failed["1.3.3"]
    assert "could not send it by C-MOVE (status 0xB000)" in state.failed["1.3.2"]
    assert all(r.startswith("file not found; ") for r in state.failed.values())


async def test_an_archive_away_is_waited_for_with_a_growing_delay_never_counted() -> None:
    state = FakeState([awaiting("1.3.1")])
    mover = Mover(state, FakeScu(has=set(), error=ConnectionFailed("refused")), POLICY)
    delays = []
    for _ in range(3):
        report = await mover.round()
        assert report.away == "refused"
        delays.append(mover.after().seconds)
    assert delays == [10, 20, 40]
    assert state.deferred == [] and state.failed == {}
    mover.scu = FakeScu(has={"1.3.1"})
    await mover.round()
    assert state.moved_uids == ["1.3.1"] and mover.after().seconds == 5


async def test_a_refusal_counts_an_attempt_and_fails_the_instances_after_the_last() -> None:
    unknown_destination = FailureStatus("C-MOVE", 0xA801)
    state = FakeState([awaiting("1.3.1", attempts=0)])
    await Mover(state, FakeScu(has=set(), error=unknown_destination), POLICY).round()
    assert state.deferred == [(["1.3.1"], True)] and state.failed == {}
    state = FakeState([awaiting("1.3.1", attempts=2)])
    await Mover(state, FakeScu(has=set(), error=unknown_destination), POLICY).round()
    assert "0xA801" in state.failed["1.3.1"] and "(3 attempts)" in state.failed["1.3.1"]


def two_series(task: str = "task") -> list[Awaiting]:
    """A study of two whole series to fetch (study_size 5: one instance is readable here):
    two SERIES-level C-MOVEs."""
    return [
        awaiting(f"1.3.{s}{n}", f"1.2.{s}", series_size=2, study_size=5, task=task)
        for s in (1, 2)
        for n in (0, 1)
    ]


@pytest.mark.parametrize("how", ["pause", "cancel"])
async def test_a_task_stopped_mid_round_is_asked_nothing_more(how: str) -> None:
    items = two_series()
    state = FakeState(items)
    scu = FakeScu(has={a.sop_instance_uid for a in items})
    scu.after_move = lambda: state.stopped.add("task")  # paused or cancelled meanwhile
    report = await Mover(state, scu, POLICY).round()
    assert [q.series_uid for q in scu.moves] == ["1.2.1"]
    assert state.moved_uids == ["1.3.10", "1.3.11"]
    assert (report.moved, report.held) == (2, 2)
    assert state.deferred == [] and state.failed == {}  # not an attempt, not a failure
    again = await Mover(state, scu, POLICY).round()  # paused or cancelled: nothing asked
    assert len(scu.moves) == 1 and again.studies == 0
    if how == "pause":  # resumed: the rest is fetched, each instance once
        state.stopped.clear()
        scu.after_move = None
        await Mover(state, scu, POLICY).round()
        assert [q.series_uid for q in scu.moves] == ["1.2.1", "1.2.2"]
        assert sorted(state.moved_uids) == sorted(a.sop_instance_uid for a in items)
        assert len(state.moved_uids) == len(set(state.moved_uids))


async def test_the_next_study_of_a_task_stopped_meanwhile_is_not_even_looked_up() -> None:
    first = awaiting("1.3.1", series_size=1, study_size=1, task="t1")
    second = replace(awaiting("1.3.2", series_size=1, study_size=1, task="t2"), study_uid="1.4")
    state = FakeState([first, second])
    scu = FakeScu(has={"1.3.1", "1.3.2"})
    scu.after_move = lambda: state.stopped.add("t2")
    report = await Mover(state, scu, POLICY).round()
    assert (scu.finds, len(scu.moves), report.studies, report.held) == (1, 1, 1, 1)
    assert state.started == ["1.3.1"] and state.moved_uids == ["1.3.1"]


async def test_instances_of_a_paused_task_are_left_out_of_a_shared_study() -> None:
    """One study, two tasks' instances (two rounds of the watcher); one task paused as the
    round begins: the other's are fetched alone (IMAGE level), not the whole study."""
    items = [awaiting(f"1.3.{n}", series_size=4, study_size=4, task=f"t{n % 2}") for n in range(4)]
    assert [q.level for q, _ in plan("1.2", items)] == [Level.STUDY]
    state = FakeState(items, stop_on_due={"t0"})
    scu = FakeScu(has={a.sop_instance_uid for a in items})
    report = await Mover(state, scu, POLICY).round()
    (query,) = scu.moves
    assert query.level == Level.IMAGE and query.sop_instance_uid == "1.3.1\\1.3.3"
    assert state.moved_uids == ["1.3.1", "1.3.3"] and report.held == 2


def test_settings_fetch_only_in_full_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DCM4CHEE_STORAGE_ROOTS", "DCM4CHEE_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DCM4CHEE_ARCHIVE_URL", "postgresql://pacs@127.0.0.1/pacsdb")
    monkeypatch.setenv("DCM4CHEE_DICOM_HOST", "archive.local")
    with pytest.raises(ValueError, match="is for DCM4CHEE_MODE=full"):
        Dcm4cheeWatcherSettings()  # type: ignore[call-arg]
    monkeypatch.setenv("DCM4CHEE_MODE", "full")  # no storage roots: everything by C-MOVE
    s = Dcm4cheeWatcherSettings()  # type: ignore[call-arg]
    assert s.retrieves() and (s.dicom_ae_title, s.move_destination) == ("DCM4CHEE", "DICOMFLOW")
