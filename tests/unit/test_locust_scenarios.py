"""The Locust scenarios count a wrong answer as a failure, a 404 included: `_expect` and the
archive (Range, then resume with If-Range) and Orthanc webhook tasks, whose requests go out
with `catch_response=True` so Locust records the verdict they give.

Locust is the optional `loadtest` extra, not installed with the tests: the locustfile is
loaded here against a stand-in `locust` module (HttpUser, task, between and a response that
records `success()` / `failure()`, the calls Locust's ResponseContextManager offers), so this
runs without it and never starts Locust's runner."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

LOCUSTFILE = Path(__file__).parents[2] / "load_test" / "locustfile.py"


@dataclass
class Answer:
    """A stand-in for Locust's ResponseContextManager: what the task decided about it."""

    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    text: str = ""
    verdict: str | None = None

    def success(self) -> None:
        self.verdict = "success"

    def failure(self, why: object) -> None:
        self.verdict = f"failure: {why}"

    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *_: object) -> None:
        return None


@dataclass
class Sent:
    method: str
    url: str
    options: dict[str, Any]
    answer: Answer


class Client:
    """Answers every request with `reply(method, url, options)`; keeps what was sent."""

    def __init__(self, reply: Callable[[str, str, dict[str, Any]], Answer]) -> None:
        self.reply = reply
        self.sent: list[Sent] = []
        self.headers: dict[str, str] = {}

    def request(self, method: str, url: str, **options: Any) -> Answer:
        answer = self.reply(method, url, options)
        self.sent.append(Sent(method, url, options, answer))
        return answer

    def get(self, url: str, **options: Any) -> Answer:
        return self.request("GET", url, **options)

    def post(self, url: str, **options: Any) -> Answer:
        return self.request("POST", url, **options)


def _stand_in_locust() -> dict[str, types.ModuleType]:
    locust = types.ModuleType("locust")
    clients = types.ModuleType("locust.clients")

    class HttpUser:
        client: Client

    def task(weight: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
        return lambda fn: fn

    locust.HttpUser = HttpUser  # type: ignore[attr-defined]
    locust.task = task  # type: ignore[attr-defined]
    locust.between = lambda low, high: None  # type: ignore[attr-defined]
    clients.ResponseContextManager = Answer  # type: ignore[attr-defined]
    locust.clients = clients  # type: ignore[attr-defined]
    return {"locust": locust, "locust.clients": clients}


@pytest.fixture
def scenarios(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    for name, module in _stand_in_locust().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("locustfile_under_test", LOCUSTFILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module


def user(cls: type, reply: Callable[[str, str, dict[str, Any]], Answer]) -> Any:
    u = cls()
    u.client = Client(reply)
    u.on_start()
    return u


@pytest.mark.parametrize(
    ("status", "verdict"), [(206, "success"), (404, "failure"), (500, "failure"), (200, "failure")]
)
def test_expect_passes_only_the_expected_statuses(
    scenarios: types.ModuleType, status: int, verdict: str
) -> None:
    answer = Answer(status, text="Not Found")
    scenarios._expect(answer, {206})
    assert answer.verdict is not None and answer.verdict.startswith(verdict)
    if verdict == "failure":
        assert f"HTTP {status}" in answer.verdict


def test_an_archive_answering_404_is_a_failure_and_not_resumed(
    scenarios: types.ModuleType,
) -> None:
    u = user(scenarios.Clinician, lambda *_: Answer(404, text='{"detail":"unknown study"}'))
    u.study_uids = ["1.2.3"]
    u.archive_range()
    [sent] = u.client.sent
    assert sent.url == "/v1/studies/1.2.3/archive"
    assert sent.options["catch_response"] is True  # else Locust ignores the verdict
    assert sent.options["headers"] == {"Range": "bytes=0-65535"}
    assert sent.answer.verdict == 'failure: HTTP 404: {"detail":"unknown study"}'


def test_an_archive_answering_206_twice_is_a_success_resumed_with_if_range(
    scenarios: types.ModuleType,
) -> None:
    def reply(method: str, url: str, options: dict[str, Any]) -> Answer:
        return Answer(206, {"etag": '"abc"', "content-length": "65536"})

    u = user(scenarios.Clinician, reply)
    u.study_uids = ["1.2.3"]
    u.archive_range()
    first, resume = u.client.sent
    assert resume.options["headers"] == {"Range": "bytes=65536-", "If-Range": '"abc"'}
    assert resume.options["catch_response"] is True
    assert [first.answer.verdict, resume.answer.verdict] == ["success", "success"]


def test_a_resume_answering_404_is_a_failure(scenarios: types.ModuleType) -> None:
    answers = iter([Answer(206, {"etag": '"abc"', "content-length": "65536"}), Answer(404)])
    u = user(scenarios.Clinician, lambda *_: next(answers))
    u.study_uids = ["1.2.3"]
    u.archive_range()
    first, resume = u.client.sent
    assert first.answer.verdict == "success"
    assert resume.answer.verdict is not None and resume.answer.verdict.startswith("failure")


@pytest.mark.parametrize(("status", "verdict"), [(202, "success"), (404, "failure")])
def test_the_orthanc_webhook_counts_only_202(
    scenarios: types.ModuleType, monkeypatch: pytest.MonkeyPatch, status: int, verdict: str
) -> None:
    url = "http://127.0.0.1:8112/v1/ingest/orthanc"
    monkeypatch.setattr(scenarios, "WEBHOOK_URL", url)
    monkeypatch.setattr(scenarios, "ORTHANC_STUDIES", ["orthanc-study-1"])
    u = user(scenarios.Operator, lambda *_: Answer(status))
    u.orthanc_webhook()
    [sent] = u.client.sent
    assert (sent.method, sent.url) == ("POST", url)  # the watcher's own address, not --host
    assert sent.options["json"] == {"ID": "orthanc-study-1", "Path": "Study"}
    assert sent.options["catch_response"] is True
    assert sent.answer.verdict is not None and sent.answer.verdict.startswith(verdict)
