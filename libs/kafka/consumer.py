"""The consuming half of every stage: at-least-once, manual commits, bounded retries, DLQ.

One loop per stage: fetch a batch, run it through its handlers (retrying with
backoff), send the events they return, wait for every acknowledgement (including
DLQ sends), and only then commit the batch's offsets. A crash anywhere before the
commit means redelivery, so every handler's effects must be idempotent.

A topic is handled a message at a time (`Route`) or a batch at a time
(`BatchRoute`: the handler gets every valid event of the batch at once, does its
effects with set-based statements in one transaction, and returns one outcome per
event). A batch handler that raises is run again one message at a time, so a
poison message is retried and dead-lettered alone while the rest reach their
outcome; an outcome that is an exception is treated the same way for its message.
One INFO line per batch; per message at DEBUG.

A poll that returns less than a whole batch waits up to `linger_ms` for more before the
batch is handled (the consumer's side of the producer's linger). Under a backlog a poll
fills the batch at once and nothing waits; when events trickle in (C-STORE from a few
associations) each stage would otherwise handle batches of one or two and pay its fixed
costs per batch (a transaction, a round trip to the broker, an IPC call, a commit) for
nearly every instance.

With `overlap=2` two batches are in flight: the next batch's handler (its effects: the
storage-writer's copies) runs while the one before it is still handled (its flush), sends
its events, waits for their acknowledgements and commits; its handler must bear being
called while the previous call runs. Order is kept where it is observable: a batch sends
its events only after the batch before it sent all of its own, and commits only after that
batch committed; a batch that fails takes every later one in flight with it (none of them
commits: all are replayed). Only batch handlers overlap (a `Route`'s messages are handled
after the previous batch sent its events).

Failures are sorted three ways:
- `PermanentError` (bad input): to `<topic>.dlq` at once, with the reason.
- an outage (`is_outage`: database or broker unreachable or restarting, a full
  disk, object storage failing on its side (`StorageUnavailable`, a ConnectionError)):
  retried without limit, since dead-lettering every message during an
  outage would lose the work; the service reports not-ready meanwhile. These
  retries do not count against the message's own attempts.
- anything else: retried `max_retries` times with exponential backoff, then DLQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError, KafkaError
from pydantic import BaseModel, ValidationError

from libs.contracts.errors import FULL_DISK, PermanentError
from libs.contracts.events import DeadLetter, Event
from libs.contracts.topics import dlq_topic
from libs.kafka.connection import Kafka, client_args
from libs.kafka.producer import Producer
from libs.runtime.logging import get_logger
from libs.runtime.metrics import ConsumerMetrics

log = get_logger(__name__)

E = TypeVar("E", bound=BaseModel)
Handler = Callable[[E], Awaitable[Sequence[Event]]]
# One per event of the batch, in order: the events to emit, or why that message failed.
Outcome = Sequence[Event] | Exception
BatchHandler = Callable[[Sequence[E]], Awaitable[Sequence[Outcome]]]

UNREACHABLE = (
    ConnectionError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.AdminShutdownError,  # 57P01: a restart or a terminated backend
    asyncpg.CrashShutdownError,  # 57P02: another backend crashed, the server restarts
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    KafkaConnectionError,
)
MAX_OUTAGE_BACKOFF = 10.0


def is_outage(exc: BaseException) -> bool:
    """A dependency away, not a fault of the message: hold and retry, never dead-letter."""
    return isinstance(exc, UNREACHABLE) or (isinstance(exc, OSError) and exc.errno in FULL_DISK)


class StopRequested(Exception):
    """Raised inside the loop when shutdown interrupts an outage retry."""


@dataclass(frozen=True)
class Route(Generic[E]):
    """How one topic is handled: the event model its messages must match, and the handler."""

    model: type[E]
    handler: Handler[E]


@dataclass(frozen=True)
class BatchRoute(Generic[E]):
    """A topic handled a batch at a time (see the module docstring)."""

    model: type[E]
    handler: BatchHandler[E]

    def one(self, event: E) -> Awaitable[Sequence[Event]]:
        """The handler for one message alone (a batch of one)."""

        async def handle() -> Sequence[Event]:
            outcomes = await self.handler([event])
            if len(outcomes) != 1:
                raise RuntimeError(f"batch handler returned {len(outcomes)} outcomes for 1 event")
            if isinstance(outcomes[0], Exception):
                raise outcomes[0]
            return outcomes[0]

        return handle()


AnyRoute = Route[Any] | BatchRoute[Any]


@dataclass
class _Tally:
    """What one batch came to, for its one log line."""

    handled: int = 0
    emitted: int = 0
    dead_lettered: int = 0


class _Abandoned(Exception):
    """The batch before this one failed: this one is replayed with it, never committed."""


@dataclass
class _InFlight:
    """A batch being handled, and when its events were all sent (`sent`)."""

    batch: dict[TopicPartition, list[ConsumerRecord]]
    sent: asyncio.Future[None]
    task: asyncio.Task[None] | None = None


@dataclass
class _Prepared:
    """A topic's records of a batch after its batch handler ran (before anything is sent)."""

    route: BatchRoute[Any]
    invalid: list[tuple[ConsumerRecord, str]]
    valid: list[tuple[ConsumerRecord, Any]]
    outcomes: Sequence[Outcome] | None  # None: the handler failed, one message at a time
    seconds: float = 0.0


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_seconds: float = 0.2

    def delay(self, attempt: int) -> float:
        return float(min(self.backoff_seconds * 2 ** (attempt - 1), MAX_OUTAGE_BACKOFF))


class StageConsumer:
    def __init__(
        self,
        *,
        stage: str,
        group_id: str,
        routes: Mapping[str, AnyRoute],
        bootstrap_servers: Kafka,
        producer: Producer,
        metrics: ConsumerMetrics,
        stopping: asyncio.Event,
        retry: RetryPolicy,
        batch_size: int = 200,
        concurrency: int = 1,
        dead_letters: bool = True,
        session_timeout_ms: int = 30_000,
        overlap: int = 1,
        linger_ms: int = 0,
    ) -> None:
        self.stage = stage
        self._routes = dict(routes)
        self._producer = producer
        self._metrics = metrics
        self._stopping = stopping
        self._retry = retry
        self._batch_size = batch_size
        self._dead_letters = dead_letters  # False for consumers of DLQs: log and skip instead
        self._slots = asyncio.Semaphore(concurrency)
        self._overlap = max(1, overlap)  # batches in flight (see the module docstring)
        self._linger = linger_ms / 1000
        self.healthy = False
        for topic in self._routes:
            metrics.init_topic(topic)
        self._lag_labels: set[tuple[str, str]] = set()
        self._tally = _Tally()
        self._consumer = AIOKafkaConsumer(
            *self._routes,
            **client_args(bootstrap_servers),
            group_id=group_id,
            client_id=f"dicomflow-{stage}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=600_000,
            session_timeout_ms=session_timeout_ms,
            rebalance_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(250, session_timeout_ms // 4),
        )

    async def start(self) -> None:
        await self._consumer.start()
        self.healthy = True

    async def stop(self) -> None:
        self.healthy = False
        await self._consumer.stop()

    async def run(self) -> None:
        """Consume until `stopping` is set; the batches in flight are finished and committed."""
        inflight: list[_InFlight] = []
        structlog.contextvars.bind_contextvars(service=self.stage)
        try:
            while not self._stopping.is_set():
                if len(inflight) >= self._overlap:
                    await self._finish_oldest(inflight)
                    continue
                batch = await self._consumer.getmany(
                    timeout_ms=0 if inflight else 500, max_records=self._batch_size
                )
                if not batch:
                    if inflight:
                        await self._finish_oldest(inflight)
                    else:
                        self._record_idle_lag()
                    continue
                if self._linger:
                    batch = await self._fill(batch)
                previous = inflight[-1] if inflight else None
                current = _InFlight(batch, asyncio.get_running_loop().create_future())
                current.task = asyncio.create_task(self._process(current, previous))
                inflight.append(current)
            while inflight:
                await self._finish_oldest(inflight)
        except StopRequested:
            log.info("stopped during a retry; the batch will be redelivered")
        finally:
            for item in inflight:
                assert item.task is not None
                item.task.cancel()
            await asyncio.gather(*(i.task for i in inflight if i.task), return_exceptions=True)

    async def _fill(
        self, batch: dict[TopicPartition, list[ConsumerRecord]]
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """`batch` and what arrives within the linger, up to a whole batch. A record the
        batch already holds (a partition revoked and assigned again meanwhile is fetched
        again from its committed offset) is not taken twice."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._linger
        batch = {tp: list(records) for tp, records in batch.items()}
        count = sum(len(records) for records in batch.values())
        while count < self._batch_size and not self._stopping.is_set():
            left = deadline - loop.time()
            if left <= 0:
                break
            more = await self._consumer.getmany(  # in slices: a stop request ends the wait
                timeout_ms=max(1, round(min(left, 0.1) * 1000)),
                max_records=self._batch_size - count,
            )
            for tp, records in more.items():
                held = batch.setdefault(tp, [])
                last = held[-1].offset if held else -1
                new = [r for r in records if r.offset > last]
                held += new
                count += len(new)
        return batch

    async def _finish_oldest(self, inflight: list[_InFlight]) -> None:
        """Wait for the oldest batch in flight; if it failed, every later one fails with it
        and all of them are replayed from their first offsets."""
        oldest = inflight[0]
        assert oldest.task is not None
        try:
            await oldest.task
            inflight.pop(0)
        except (KafkaError, *UNREACHABLE) as exc:
            # Sends not acknowledged or a commit lost: replay (effects are idempotent, so
            # doing them again is safe).
            self.healthy = False
            log.warning("batch not completed, replaying", error=repr(exc))
            await asyncio.gather(*(i.task for i in inflight[1:] if i.task), return_exceptions=True)
            firsts: dict[TopicPartition, int] = {}
            for item in inflight:
                for tp, records in item.batch.items():
                    firsts.setdefault(tp, records[0].offset)
            owned = self._consumer.assignment()
            for tp, offset in firsts.items():
                if tp in owned:  # a partition moved away meanwhile: its new owner redelivers
                    self._consumer.seek(tp, offset)
            inflight.clear()
            await self._sleep(1.0)

    async def _process(self, current: _InFlight, previous: _InFlight | None) -> None:
        try:
            await self._process_batch(current, previous)
        finally:
            if not current.sent.done():
                current.sent.set_exception(_Abandoned())
            current.sent.exception()  # retrieved here: awaited by the next batch, if any

    async def _process_batch(self, current: _InFlight, previous: _InFlight | None) -> None:
        batch = current.batch
        started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(service=self.stage)
        prepared: list[_Prepared] = []
        for topic, records in _by_topic(batch).items():
            route = self._routes[topic]
            if isinstance(route, BatchRoute):
                prepared.append(await self._run_batch_handler(route, records))
        if previous is not None:  # its events go first (order per partition is kept)
            await previous.sent
        self._tally = _Tally()
        acks: list[asyncio.Future[object]] = []
        for p in prepared:
            acks += await self._emit(p)
        singles: dict[TopicPartition, list[ConsumerRecord]] = {}
        for tp, records in batch.items():
            if not isinstance(self._routes[tp.topic], BatchRoute):
                singles[tp] = records
        if singles:
            pending = await asyncio.gather(*(self._in_order(rs) for rs in _by_key(singles)))
            acks += [f for futures in pending for f in futures]
        tally = self._tally
        current.sent.set_result(None)  # the next batch may send now
        if acks:
            await asyncio.gather(*acks)
        if previous is not None:  # commits in order: never past a batch still in flight
            assert previous.task is not None
            try:
                await previous.task
            except Exception as exc:
                raise _Abandoned() from exc
        offsets = {tp: rs[-1].offset + 1 for tp, rs in batch.items()}
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError as exc:
            # Partitions were reassigned meanwhile; their new owner redelivers.
            log.warning("commit failed after rebalance", error=str(exc))
        self.healthy = True
        for tp, rs in batch.items():
            lag = (self._consumer.highwater(tp) or 0) - (rs[-1].offset + 1)
            self._metrics.lag.labels(tp.topic, str(tp.partition)).set(max(lag, 0))
        self._forget_lost_partitions()
        log.info(
            "batch handled",
            messages=sum(len(rs) for rs in batch.values()),
            ok=tally.handled,
            emitted=tally.emitted,
            dead_lettered=tally.dead_lettered,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _run_batch_handler(
        self, route: BatchRoute[Any], records: list[ConsumerRecord]
    ) -> _Prepared:
        """One topic's records of the batch through its batch handler (see BatchRoute): the
        effects, nothing sent yet (`_emit` sends)."""
        invalid: list[tuple[ConsumerRecord, str]] = []
        valid: list[tuple[ConsumerRecord, Any]] = []
        for record in records:
            try:
                valid.append((record, route.model.model_validate_json(record.value or b"")))
            except ValidationError as exc:
                invalid.append(
                    (record, f"invalid {route.model.__name__} event: {_first_errors(exc)}")
                )
        prepared = _Prepared(route, invalid, valid, None)
        if not valid:
            prepared.outcomes = []
            return prepared
        topic = records[0].topic
        started = time.perf_counter()
        outages = 0
        while True:
            try:
                outcomes = await route.handler([event for _, event in valid])
                if len(outcomes) != len(valid):
                    raise RuntimeError(f"{len(outcomes)} outcomes for {len(valid)} events")
                break
            except Exception as exc:
                if is_outage(exc):
                    outages += 1
                    self.healthy = False
                    self._metrics.retries.labels(topic, "unreachable").inc()
                    log.warning("dependency unreachable, retrying the batch", error=repr(exc))
                    await self._sleep(self._retry.delay(outages))
                    continue
                # Something in the batch fails it: one message at a time, so only the
                # guilty one is retried to its limit and dead-lettered.
                log.warning(
                    "batch failed, handling its messages one at a time",
                    error=repr(exc),
                    messages=len(valid),
                )
                return prepared
        prepared.outcomes = outcomes
        prepared.seconds = (time.perf_counter() - started) / len(valid)
        return prepared

    async def _emit(self, p: _Prepared) -> list[asyncio.Future[object]]:
        """Send what a batch handler's outcomes say: their events, or dead letters."""
        futures: list[asyncio.Future[object]] = []
        for record, reason in p.invalid:
            futures += await self._dead_letter(record, reason, "ValidationError", 1, None)
        if p.outcomes is None:
            for record, event in p.valid:
                futures += await self._handle(record, p.route, event)
            return futures
        if not p.valid:
            return futures
        topic = p.valid[0][0].topic
        ok = 0
        for (record, event), outcome in zip(p.valid, p.outcomes, strict=True):
            if isinstance(outcome, Exception):
                futures += await self._handle(record, p.route, event, first_error=outcome)
                continue
            futures += [await self._producer.send(e) for e in outcome]
            self._metrics.handler_seconds.labels(topic).observe(p.seconds)
            self._tally.emitted += len(outcome)
            ok += 1
            log.debug(
                "handled",
                offset=record.offset,
                correlation_id=_correlation_id(event),
                emitted=[type(e).TOPIC for e in outcome],
            )
        self._metrics.messages.labels(topic, "ok").inc(ok)
        self._tally.handled += ok
        return futures

    def _record_idle_lag(self) -> None:
        for tp in self._consumer.assignment():
            self._metrics.lag.labels(tp.topic, str(tp.partition)).set(0)
        self._forget_lost_partitions()

    def _forget_lost_partitions(self) -> None:
        """A partition moved to another replica is reported there: drop its series here, or
        the last value would stay forever and be summed with the new owner's."""
        owned = {(tp.topic, str(tp.partition)) for tp in self._consumer.assignment()}
        for labels in self._lag_labels - owned:
            with contextlib.suppress(KeyError):  # never set: assigned and lost between polls
                self._metrics.lag.remove(*labels)
        self._lag_labels = owned

    async def _in_order(self, records: list[ConsumerRecord]) -> list[asyncio.Future[object]]:
        """One key's messages, one after the other; other keys run meanwhile (bounded)."""
        futures: list[asyncio.Future[object]] = []
        for record in records:
            async with self._slots:
                futures += await self._handle(record, self._routes[record.topic])
        return futures

    async def _handle(
        self,
        record: ConsumerRecord,
        route: AnyRoute,
        event: Any = None,
        *,
        first_error: Exception | None = None,
    ) -> list[asyncio.Future[object]]:
        """One message alone, retried to its limit; `event` when already validated,
        `first_error` when its first attempt (in a batch) already failed with it."""
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            service=self.stage,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        started = time.perf_counter()
        if event is None:
            try:
                event = route.model.model_validate_json(record.value or b"")
            except ValidationError as exc:
                reason = f"invalid {route.model.__name__} event: {_first_errors(exc)}"
                return await self._dead_letter(record, reason, "ValidationError", 1, None)
        structlog.contextvars.bind_contextvars(correlation_id=_correlation_id(event))
        if record.key:  # keyed topics are keyed by StudyInstanceUID
            structlog.contextvars.bind_contextvars(study_uid=record.key.decode(errors="replace"))
        handler = route.one if isinstance(route, BatchRoute) else route.handler
        attempt = outages = 0  # the message's own failures; outage retries apart
        while True:
            attempt += 1
            try:
                if first_error is not None:
                    error, first_error = first_error, None
                    raise error
                out = await handler(event)
                futures = [await self._producer.send(e) for e in out]
            except PermanentError as exc:
                return await self._dead_letter(record, str(exc), type(exc).__name__, attempt, event)
            except Exception as exc:
                if is_outage(exc):
                    attempt -= 1
                    outages += 1
                    self.healthy = False
                    self._metrics.retries.labels(record.topic, "unreachable").inc()
                    log.warning("dependency away, retrying", error=repr(exc), outages=outages)
                    await self._sleep(self._retry.delay(outages))
                    continue
                if attempt > self._retry.max_retries:
                    log.exception("handler failed, giving up")
                    reason = f"{type(exc).__name__}: {exc}"
                    return await self._dead_letter(
                        record, reason, type(exc).__name__, attempt, event
                    )
                self._metrics.retries.labels(record.topic, "error").inc()
                log.warning("handler failed, retrying", error=repr(exc), attempt=attempt)
                await self._sleep(self._retry.delay(attempt))
                continue
            elapsed = time.perf_counter() - started
            self._metrics.handler_seconds.labels(record.topic).observe(elapsed)
            self._metrics.messages.labels(record.topic, "ok").inc()
            self._tally.handled += 1
            self._tally.emitted += len(out)
            log.debug("handled", emitted=[type(e).TOPIC for e in out], ms=round(elapsed * 1000, 2))
            return futures

    async def _dead_letter(
        self,
        record: ConsumerRecord,
        reason: str,
        error_type: str,
        attempts: int,
        event: BaseModel | None,
    ) -> list[asyncio.Future[object]]:
        self._metrics.messages.labels(record.topic, "dlq").inc()
        self._tally.dead_lettered += 1
        log.warning(
            "dead-lettered",
            reason=reason,
            attempts=attempts,
            topic=record.topic,
            offset=record.offset,
            correlation_id=_correlation_id(event),
        )
        if not self._dead_letters:
            return []
        letter = DeadLetter(
            original_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode(errors="replace") if record.key else None,
            payload=record.value.decode(errors="replace") if record.value else "",
            headers={k: v.decode(errors="replace") for k, v in (record.headers or ())},
            error=reason,
            error_type=error_type,
            stage=self.stage,
            attempts=attempts,
            correlation_id=_correlation_id(event),
            file_id=_file_id(event) if event is not None else _file_id_from_raw(record.value),
        )
        headers = [("error_type", error_type.encode()), ("stage", self.stage.encode())]
        if letter.correlation_id:
            headers.append(("correlation_id", letter.correlation_id.encode()))
        future = await self._producer.send_raw(
            dlq_topic(record.topic), letter.model_dump_json().encode(), record.key, headers
        )
        self._metrics.dlq.labels(record.topic).inc()
        return [future]

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return
        raise StopRequested


def _by_topic(batch: dict[TopicPartition, list[ConsumerRecord]]) -> dict[str, list[ConsumerRecord]]:
    """A batch's records per topic, each partition's in offset order."""
    out: dict[str, list[ConsumerRecord]] = {}
    for tp, records in batch.items():
        out.setdefault(tp.topic, []).extend(records)
    return out


def _by_key(batch: dict[TopicPartition, list[ConsumerRecord]]) -> list[list[ConsumerRecord]]:
    """Group a batch so that messages sharing a key (a study) keep their order.
    Messages without a key are independent of each other."""
    groups: dict[tuple[TopicPartition, bytes], list[ConsumerRecord]] = {}
    single: list[list[ConsumerRecord]] = []
    for tp, records in batch.items():
        for r in records:
            if r.key is None:
                single.append([r])
            else:
                groups.setdefault((tp, r.key), []).append(r)
    return [*groups.values(), *single]


def _file_id_from_raw(value: bytes | None) -> int | None:
    """Best effort for a message that failed validation: its ledger row, if it names one,
    so the file still reaches its final outcome (failed) instead of staying pending."""
    try:
        file_id = json.loads(value or b"")["file"]["file_id"]
    except (ValueError, TypeError, KeyError):
        return None
    return file_id if isinstance(file_id, int) else None


def _correlation_id(event: BaseModel | None) -> str | None:
    value = getattr(event, "correlation_id", None)
    return value if isinstance(value, str) else None


def _file_id(event: BaseModel | None) -> int | None:
    file = getattr(event, "file", None)
    return getattr(file, "file_id", None)


def _first_errors(exc: ValidationError, limit: int = 3) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:limit]]
    return "; ".join(parts)
