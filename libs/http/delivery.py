"""Delivery of one request to an HTTP receiver, shared by the index-publisher (a study
revision to the central index) and the backend connector (a patient or an image to the
patient-aware backend).

One study revision to the central index: bounded retries with exponential backoff and
jitter, `Retry-After` honoured, and the difference between "this study is refused" (to the
DLQ) and "the receiver is down" (held, never dead-lettered).

Outage policy: when a revision's retry budget runs out and no other delivery succeeded
between its first and its last attempt, the receiver (not the study) is the problem:
`ReceiverUnavailable` is raised, which the bus treats like an unreachable dependency (the
message is held and retried without limit, `/ready` reports not ready, nothing is committed).
Only when the receiver accepted other studies while this one kept failing is it dead-lettered
(`ReceiverGaveUp`). A 401/403 means our credentials are refused: every study would fail the
same way, so it is held too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from libs.contracts.errors import PermanentError
from libs.runtime.logging import get_logger
from libs.runtime.metrics import LATENCY_BUCKETS, metric_prefix

log = get_logger(__name__)

Verdict = Literal["delivered", "retry", "rejected", "refused"]
RETRYABLE_4XX = {408, 429}
REFUSED = {401, 403}


@dataclass(frozen=True)
class DeliveryMetrics:
    """The sender's own metrics (`<stage>_attempts_total`...), next to the consumer metrics
    every stage exports."""

    attempts: Counter
    deliveries: Counter
    request_seconds: Histogram
    receiver_up: Gauge

    @classmethod
    def create(cls, stage: str, registry: CollectorRegistry) -> DeliveryMetrics:
        p = metric_prefix(stage)
        return cls(
            attempts=Counter(
                f"{p}_attempts_total",
                "HTTP attempts, by answer (2xx, 4xx, 5xx, no_answer).",
                ["answer"],
                registry=registry,
            ),
            deliveries=Counter(
                f"{p}_deliveries_total",
                "Study revisions, by outcome (delivered, rejected, gave_up).",
                ["outcome"],
                registry=registry,
            ),
            request_seconds=Histogram(
                f"{p}_request_seconds",
                "Time of one HTTP attempt.",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            receiver_up=Gauge(
                f"{p}_receiver_up",
                "1 while the central index accepts deliveries, 0 during an outage.",
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class Answer:
    """What came back from one attempt: an HTTP status and a body excerpt, or no answer."""

    status: int | None
    body: str
    retry_after: float | None = None

    def describe(self) -> str:
        if self.status is None:
            return f"no answer ({self.body})"
        return f"HTTP {self.status}: {self.body}" if self.body else f"HTTP {self.status}"

    @property
    def kind(self) -> str:
        """Metric label: the status class, or the transport failure."""
        return f"{self.status // 100}xx" if self.status is not None else "no_answer"


def classify(answer: Answer) -> Verdict:
    status = answer.status
    if status is None or status >= 500 or status in RETRYABLE_4XX:
        return "retry"
    if 200 <= status < 300:
        return "delivered"
    if status in REFUSED:
        return "refused"
    return "rejected"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds (`120`) or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True)
class Backoff:
    base_seconds: float
    max_seconds: float
    retry_after_max_seconds: float

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Exponential with equal jitter (half fixed, half random), at least `Retry-After`."""
        ceiling = min(self.max_seconds, self.base_seconds * 2.0 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max_seconds))
        return delay


class ReceiverRejected(PermanentError):
    """The receiver refused this study (4xx other than 401/403/408/429): not retried."""


class ReceiverGaveUp(PermanentError):
    """Transient failures for this study beyond the budget while other studies went through."""


class ReceiverUnavailable(ConnectionError):
    """The receiver is down or refuses our credentials: hold the message, do not DLQ it."""


class ReceiverHealth:
    """Shared by every delivery of the process: when the receiver last accepted a study (to
    tell an outage from a study the receiver cannot take), and whether it is up."""

    def __init__(self, metrics: DeliveryMetrics, target: str = "central index") -> None:
        self.last_success = float("-inf")  # time.monotonic()
        self.up = True
        self.target = target
        self._metrics = metrics
        metrics.receiver_up.set(1)

    def record(self, up: bool) -> None:
        if up:
            self.last_success = time.monotonic()
        if up != self.up:
            log.warning(f"{self.target} is back" if up else f"{self.target} is down")
        self.up = up
        self._metrics.receiver_up.set(1 if up else 0)


Send = Callable[[bytes, dict[str, str]], Awaitable[Answer]]
Sleep = Callable[[float], Awaitable[bool]]  # False when the service is stopping


class Deliverer:
    def __init__(
        self,
        send: Send,
        *,
        max_attempts: int,
        backoff: Backoff,
        health: ReceiverHealth,
        metrics: DeliveryMetrics,
        sleep: Sleep,
    ) -> None:
        self._send = send
        self._target = health.target
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._health = health
        self._metrics = metrics
        self._sleep = sleep

    async def deliver(self, body: bytes, headers: dict[str, str]) -> Answer:
        """Return the accepting answer, or raise one of the three Receiver* errors."""
        answer = Answer(None, "not sent")
        first = last = time.monotonic()
        for attempt in range(1, self._max_attempts + 1):
            last = time.monotonic()
            answer = await self._send(body, headers)
            self._metrics.request_seconds.observe(time.monotonic() - last)
            self._metrics.attempts.labels(answer.kind).inc()
            verdict = classify(answer)
            if verdict == "delivered":
                self._health.record(up=True)
                self._metrics.deliveries.labels("delivered").inc()
                return answer
            if verdict == "rejected":
                self._metrics.deliveries.labels("rejected").inc()
                raise ReceiverRejected(f"{self._target} rejected the study: {answer.describe()}")
            if verdict == "refused":
                self._health.record(up=False)
                raise ReceiverUnavailable(
                    f"{self._target} refuses our credentials: {answer.describe()}"
                )
            if attempt == self._max_attempts:
                break
            delay = self._backoff.delay(attempt, answer.retry_after)
            log.info(
                "delivery failed, retrying",
                answer=answer.describe(),
                attempt=attempt,
                retry_in=round(delay, 2),
            )
            if not await self._sleep(delay):
                raise ReceiverUnavailable("stopping before the next attempt")
        # Another study accepted after this one's first failure and before its last attempt:
        # the receiver was up when it failed this study. (A success during the last attempt
        # is ambiguous, e.g. the receiver coming back: held, the next round decides.)
        if first < self._health.last_success < last:
            self._metrics.deliveries.labels("gave_up").inc()
            raise ReceiverGaveUp(
                f"gave up after {self._max_attempts} attempts while the {self._target} accepted "
                f"other studies; last answer: {answer.describe()}"
            )
        self._health.record(up=False)
        raise ReceiverUnavailable(
            f"{self._target} unavailable after {self._max_attempts} attempts: {answer.describe()}"
        )
