"""Events delivered again after their file's outcome was recorded.

At-least-once delivery means a stage killed before committing its offsets gets the same
events again. Most effects are idempotent and simply happen again; one is not: staged
copies (C-STORE, Orthanc, STOW, ISO) are removed once their file reaches an outcome, so
the redelivered event finds no file (`SourceGone`). Dead-lettering that would fill the
DLQ with letters about work that is done (hundreds after one kill -9 under load) and hide
the real bad input, so the stage asks the ledger first: a file whose row is final is
skipped and counted, one still pending is dead-lettered as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from prometheus_client import Counter

from libs.contracts.errors import SourceGone
from libs.kafka.consumer import Outcome
from libs.runtime.logging import get_logger

log = get_logger(__name__)


class _FileRef(Protocol):
    @property
    def file_id(self) -> int: ...


class _FileEvent(Protocol):
    @property
    def file(self) -> _FileRef: ...

    @property
    def correlation_id(self) -> str: ...


E = TypeVar("E", bound=_FileEvent)
BatchHandler = Callable[[Sequence[E]], Awaitable[list[Outcome]]]
# Of the given ledger row ids, those whose file already reached an outcome.
Settled = Callable[[list[int]], Awaitable[set[int]]]


def skip_settled(handler: BatchHandler[E], settled: Settled, skipped: Counter) -> BatchHandler[E]:
    """`handler` with each `SourceGone` outcome of a settled file turned into no outcome."""

    async def handle(events: Sequence[E]) -> list[Outcome]:
        outcomes = await handler(events)
        assert len(outcomes) == len(events), "a batch handler gives one outcome per event"
        gone = [n for n, o in enumerate(outcomes) if isinstance(o, SourceGone)]
        if not gone:
            return outcomes
        done = await settled([events[n].file.file_id for n in gone])
        for n in gone:
            if events[n].file.file_id in done:
                outcomes[n] = []
                skipped.inc()
                log.info(
                    "redelivered event skipped: its file already has an outcome",
                    correlation_id=events[n].correlation_id,
                    file_id=events[n].file.file_id,
                )
        return outcomes

    return handle
