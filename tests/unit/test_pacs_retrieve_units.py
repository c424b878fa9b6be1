"""On-demand PACS retrieves: the request's validation, the watcher's decisions (what to
retrieve, when a query is too wide, when to try again and when to give up) and progress."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from libs.db.retrieves import StudyRow, progress
from libs.dicom_net.errors import (
    AssociationAborted,
    AssociationRejected,
    ConnectionFailed,
    DicomTimeout,
    FailureStatus,
)
from libs.dicom_net.models import Level, Match
from libs.dicom_net.requests import RetrieveRequest
from libs.dicom_net.retry import retry_delay, transient
from services.pacs_watcher.policy import Failed, give_up, plan, too_many


def match(uid: str, n: int | None) -> Match:
    return Match(level=Level.STUDY, study_uid=uid, number_of_instances=n)


def test_a_study_uid_becomes_a_find_by_uid() -> None:
    q = RetrieveRequest(pacs="main", study_uid="1.2.3").find_query()
    assert (q.level, q.study_uid, q.patient_id, q.study_date) == (Level.STUDY, "1.2.3", "", "")


@pytest.mark.parametrize(
    ("query", "date"),
    [
        ({"study_date_from": "2024-01-02", "study_date_to": "2024-01-31"}, "20240102-20240131"),
        ({"study_date_from": "2024-01-02"}, "20240102-"),
        ({"study_date_to": "2024-01-31"}, "-20240131"),
        ({"patient_id": "P1"}, ""),
    ],
)
def test_a_query_becomes_a_study_level_find(query: dict[str, str], date: str) -> None:
    request = RetrieveRequest.model_validate({"pacs": "main", "query": {**query, "modality": "ct"}})
    q = request.find_query()
    assert (q.level, q.study_date, q.modality) == (Level.STUDY, date, "CT")
    assert q.patient_id == query.get("patient_id", "")


@pytest.mark.parametrize(
    "body",
    [
        {"pacs": "main"},  # neither
        {"pacs": "main", "study_uid": "1.2", "query": {"patient_id": "P"}},  # both
        {"pacs": "main", "query": {}},  # a query matching everything
        {"pacs": "main", "query": {"patient_id": "*"}},  # wildcards ask for everything
        {"pacs": "main", "query": {"patient_id": "P?1"}},
        {"pacs": "main", "query": {"accession_number": "A\\B"}},  # value multiplicity
        {"pacs": "main", "query": {"study_date_from": "2024-02-01", "study_date_to": "2024-01-01"}},
        {"pacs": "main", "query": {"study_date_from": "2024-13-01"}},
        {"pacs": "main", "query": {"modality": "C T"}},
        {"pacs": "main", "query": {"patient_name": "DOE"}},  # not a retrieve key
        {"pacs": "main", "study_uid": "1.2.abc"},
        {"pacs": "main", "study_uid": "1." + "2" * 70},
        {"pacs": "../etc", "study_uid": "1.2"},
        {"pacs": "main", "study_uid": "1.2", "priority": "high"},
    ],
)
def test_bad_requests_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RetrieveRequest.model_validate(body)


def test_plan_skips_what_the_index_holds_in_full() -> None:
    matches = [match("1.1", 3), match("1.2", 5), match("1.3", None), match("1.1", 3), match("", 1)]
    todo, skipped = plan(matches, {"1.1": 3, "1.2": 4})
    assert [m.study_uid for m in todo] == ["1.2", "1.3"]  # grown upstream; count unknown
    assert [m.study_uid for m in skipped] == ["1.1"]  # once, though answered twice


def test_too_many_studies_is_a_reason_naming_the_setting() -> None:
    assert too_many(200, 200) is None
    reason = too_many(201, 200)
    assert reason is not None and "201" in reason and "WATCHER_RETRIEVE_MAX_STUDIES" in reason


@pytest.mark.parametrize(
    ("exc", "again"),
    [
        (ConnectionFailed("cannot reach"), True),
        (DicomTimeout("no answer"), True),
        (AssociationAborted("aborted"), True),
        (ConnectionRefusedError(), True),
        (AssociationRejected("rejected", "provider", "busy", transient=True), True),
        (FailureStatus("C-MOVE", 0xA702), True),  # out of resources
        (
            AssociationRejected("rejected", "user", "calling AE not recognised", transient=False),
            False,
        ),
        (FailureStatus("C-MOVE", 0xA801), False),  # move destination unknown
        (FailureStatus("C-FIND", 0xC000), False),
        (ValueError("bug"), False),
    ],
)
def test_what_is_worth_another_attempt(exc: BaseException, again: bool) -> None:
    assert transient(exc) is again


def test_give_up_after_the_last_attempt_or_at_once_for_a_refusal() -> None:
    away = ConnectionFailed("cannot reach PACS at 10.0.0.1:104")
    assert give_up(away, pacs="main", attempts=4, max_attempts=5) is None
    assert give_up(away, pacs="main", attempts=5, max_attempts=5) == (
        "PACS main unreachable after 5 attempts: cannot reach PACS at 10.0.0.1:104"
    )
    refused = give_up(FailureStatus("C-MOVE", 0xA801), pacs="main", attempts=1, max_attempts=5)
    assert (
        refused == "PACS main: C-MOVE failed with status 0xA801: Refused: move destination unknown"
    )
    assert give_up(Failed("study 1.2 not found"), pacs="m", attempts=1, max_attempts=5) == (
        "study 1.2 not found"
    )


def test_retry_delay_doubles_up_to_the_ceiling() -> None:
    assert [retry_delay(n, base=30, ceiling=100) for n in (1, 2, 3, 4)] == [30, 60, 100, 100]


def test_progress_sums_studies_and_counts_what_is_left() -> None:
    studies = [
        StudyRow("1.1", 4, "done", completed=3, failed=1, remaining=0),
        StudyRow("1.2", 10, "retrieving", completed=6, warning=1, remaining=3),
        StudyRow("1.3", 5, "pending"),
        StudyRow("1.4", 2, "skipped"),
    ]
    p = progress(studies, {"1.1": 3, "1.2": 6, "1.4": 2})
    assert (p.studies_matched, p.studies_skipped, p.studies_retrieved) == (4, 1, 1)
    assert (p.instances_expected, p.instances_completed, p.instances_failed) == (19, 9, 1)
    assert (p.instances_warning, p.instances_remaining, p.instances_indexed) == (1, 8, 11)


def test_progress_without_counts_from_the_pacs_says_unknown() -> None:
    p = progress([StudyRow("1.1", None, "pending")], {})
    assert (p.instances_expected, p.instances_remaining) == (None, None)
    assert progress([], {}).instances_remaining == 0
