"""The publisher's pure parts: payloads, the retry policy, and how a run of answers from the
receiver ends (delivered, dead-lettered, or held as an outage)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from libs.contracts.errors import PermanentError
from libs.contracts.events import PatientAttrs, StudyMetadata
from libs.http.delivery import (
    Answer,
    Backoff,
    Deliverer,
    DeliveryMetrics,
    ReceiverGaveUp,
    ReceiverHealth,
    ReceiverRejected,
    ReceiverUnavailable,
    classify,
    parse_retry_after,
)
from services.index_publisher.config import IndexPublisherSettings
from services.index_publisher.payload import (
    StudyKeys,
    default_payload,
    idempotency_key,
    native_payload,
    study_datetime,
)


def event(**changes: object) -> StudyMetadata:
    fields: dict[str, object] = {
        "correlation_id": "c1",
        "source": "indexer",
        "study_uid": "1.2.3",
        "revision": 7,
        "stable": True,
        "patient": PatientAttrs(patient_id="P1", patient_name="MÜLLER^ANNA", birth_date="19700102"),
        "study_date": "20240301",
        "study_time": "0815",
        "study_description": "MR KNEE",
        "modalities": ["MR", "SR"],
        "series_count": 3,
        "instance_count": 120,
        "size_bytes": 999,
        "storage_prefix": "studies/1.2.3/",
    }
    return StudyMetadata.model_validate({**fields, **changes})


@pytest.mark.parametrize(
    ("date", "time", "expected"),
    [
        ("20240301", "101530.123", "2024-03-01T10:15:30"),
        ("20240301", "1015", "2024-03-01T10:15:00"),
        ("20240301", "10", "2024-03-01T10:00:00"),
        ("20240301", "10:15:30", "2024-03-01T10:15:30"),
        ("20240301", "", "2024-03-01"),
        ("20240301", "256199", "2024-03-01"),  # hour 25: not a time
        ("20240301", "101", "2024-03-01"),  # odd digit count: not a TM
        ("20241301", "1015", None),  # month 13
        ("", "1015", None),
    ],
)
def test_study_datetime(date: str, time: str, expected: str | None) -> None:
    assert study_datetime(date, time) == expected


def test_default_payload_is_the_flat_object_central_indexers_accept() -> None:
    body = default_payload(event(), StudyKeys(study_pk=11, patient_pk=5), "SITE")
    assert body == {
        "patient_pk": 5,
        "patient_id": "P1",
        "patient_name": "MÜLLER^ANNA",
        "study_pk": 11,
        "study_iuid": "1.2.3",
        "study_datetime": "2024-03-01T08:15:00",
        "study_description": "MR KNEE",
        "study_modality": "MR\\SR",
        "study_series": 3,
        "study_instances": 120,
        "center": "SITE",
    }


def test_native_payload_carries_the_revision_and_the_whole_study() -> None:
    body = native_payload(event(), StudyKeys(study_pk=11, patient_pk=None), "SITE")
    assert body["format"] == "dicomflow.study.v1"
    assert (body["study_uid"], body["revision"], body["stable"]) == ("1.2.3", 7, True)
    assert body["patient"]["birth_date"] == "1970-01-02"
    assert body["patient_pk"] is None
    assert body["study"]["modalities"] == ["MR", "SR"]
    assert body["study"]["size_bytes"] == 999
    assert idempotency_key("SITE", event()) == "dicomflow:SITE:1.2.3:7"


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, "delivered"),
        (201, "delivered"),
        (204, "delivered"),
        (None, "retry"),
        (500, "retry"),
        (503, "retry"),
        (408, "retry"),
        (429, "retry"),
        (400, "rejected"),
        (404, "rejected"),
        (409, "rejected"),
        (422, "rejected"),
        (301, "rejected"),
        (401, "refused"),
        (403, "refused"),
    ],
)
def test_classify(status: int | None, verdict: str) -> None:
    assert classify(Answer(status, "")) == verdict


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_doubles_with_jitter_up_to_the_cap_and_honours_retry_after() -> None:
    b = Backoff(base_seconds=1, max_seconds=8, retry_after_max_seconds=60)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (9, 8)]:
        delays = [b.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert b.delay(1, retry_after=30) == 30
    assert b.delay(1, retry_after=3600) == 60  # a receiver cannot park us for an hour


class Script:
    """A receiver that answers from a list, and a clock that records the waits."""

    def __init__(self, *answers: Answer) -> None:
        self.answers: Iterator[Answer] = iter(answers)
        self.sent = 0
        self.waits: list[float] = []
        self.between: list[object] = []

    async def send(self, body: bytes, headers: dict[str, str]) -> Answer:
        self.sent += 1
        return next(self.answers)

    async def sleep(self, seconds: float) -> bool:
        self.waits.append(seconds)
        for action in self.between:
            action()  # type: ignore[operator]
        return True


def deliverer(script: Script, attempts: int = 3) -> tuple[Deliverer, ReceiverHealth]:
    metrics = DeliveryMetrics.create("index-publisher", CollectorRegistry())
    health = ReceiverHealth(metrics)
    d = Deliverer(
        script.send,
        max_attempts=attempts,
        backoff=Backoff(0.01, 0.04, 10),
        health=health,
        metrics=metrics,
        sleep=script.sleep,
    )
    return d, health


async def test_transient_failures_are_retried_until_delivered() -> None:
    script = Script(Answer(None, "ConnectError"), Answer(429, "", 2.0), Answer(201, "ok"))
    d, health = deliverer(script)
    assert (await d.deliver(b"{}", {})).status == 201
    assert script.sent == 3 and script.waits[1] == 2.0 and health.up


async def test_a_rejection_is_not_retried_and_names_the_answer() -> None:
    script = Script(Answer(422, '{"detail":"bad id"}'))
    d, _ = deliverer(script)
    with pytest.raises(ReceiverRejected, match=r'HTTP 422: \{"detail":"bad id"\}') as info:
        await d.deliver(b"{}", {})
    assert isinstance(info.value, PermanentError) and script.sent == 1


async def test_nothing_delivered_during_the_budget_is_an_outage_not_a_dead_letter() -> None:
    script = Script(*[Answer(503, "down")] * 3)
    d, health = deliverer(script)
    with pytest.raises(ReceiverUnavailable, match="unavailable after 3 attempts: HTTP 503"):
        await d.deliver(b"{}", {})
    assert not health.up and not isinstance(ReceiverUnavailable(), PermanentError)


async def test_refused_credentials_hold_at_once() -> None:
    script = Script(Answer(401, "unknown key"))
    d, health = deliverer(script)
    with pytest.raises(ReceiverUnavailable, match="refuses our credentials"):
        await d.deliver(b"{}", {})
    assert script.sent == 1 and not health.up


async def test_failing_while_others_are_delivered_is_this_study_s_problem() -> None:
    script = Script(*[Answer(500, "mapper crashed")] * 3)
    d, health = deliverer(script)
    script.between.append(lambda: health.record(up=True))  # another study went through
    with pytest.raises(ReceiverGaveUp, match="last answer: HTTP 500: mapper crashed"):
        await d.deliver(b"{}", {})


async def test_stopping_interrupts_the_wait() -> None:
    script = Script(Answer(503, "down"), Answer(201, "ok"))
    d, _ = deliverer(script)

    async def stopping(seconds: float) -> bool:
        return False

    d._sleep = stopping
    with pytest.raises(ReceiverUnavailable, match="stopping"):
        await d.deliver(b"{}", {})
    assert script.sent == 1


def test_settings_refuse_an_unencrypted_remote_receiver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INDEX_PUBLISHER_URL", "http://central.example.org/studies")
    with pytest.raises(ValidationError, match="https"):
        IndexPublisherSettings()
    monkeypatch.setenv("INDEX_PUBLISHER_URL", "http://127.0.0.1:9000/studies")
    assert IndexPublisherSettings().url == "http://127.0.0.1:9000/studies"
    monkeypatch.setenv("INDEX_PUBLISHER_URL", "https://central.example.org/studies")
    monkeypatch.setenv("INDEX_PUBLISHER_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(ValidationError, match="no such file"):
        IndexPublisherSettings()
    monkeypatch.delenv("INDEX_PUBLISHER_CA_BUNDLE")
    with pytest.raises(ValueError, match="INDEX_PUBLISHER_CENTER is not set"):
        IndexPublisherSettings().require_target()
    monkeypatch.setenv("INDEX_PUBLISHER_CENTER", "SITE")
    monkeypatch.setenv("INDEX_PUBLISHER_API_KEY", "s3cret")
    settings = IndexPublisherSettings()
    assert settings.require_target() == "https://central.example.org/studies"
    assert "s3cret" not in str(settings.redacted())
    monkeypatch.delenv("INDEX_PUBLISHER_URL")
    with pytest.raises(ValueError, match="INDEX_PUBLISHER_URL is not set"):
        IndexPublisherSettings().require_target()


def test_dicomflow_up_starts_the_publisher_only_when_configured() -> None:
    from libs.tools.devstack import configured

    assert not configured("index-publisher", {})
    assert not configured("index-publisher", {"INDEX_PUBLISHER_URL": ""})
    assert configured("index-publisher", {"INDEX_PUBLISHER_URL": "https://central.example.org/s"})
    assert configured("indexer", {})
