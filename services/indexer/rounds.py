"""The indexer's periodic round: studies that have gone quiet become stable and are announced
(the round takes its ports; the bootstrap only wires)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from libs.contracts.events import Event, StudySnapshot
from libs.runtime.logging import get_logger
from services.indexer.handlers import metadata_event

log = get_logger(__name__)
Publish = Callable[[Sequence[Event]], Awaitable[None]]
STABLE_BATCH = 200  # studies marked stable per round


class StableStudies(Protocol):
    def mark_stable(
        self, quiet_seconds: float, limit: int
    ) -> AbstractAsyncContextManager[list[StudySnapshot]]:
        """Mark up to `limit` studies with no new instance for `quiet_seconds` stable (a new
        revision), giving their snapshots; the marks are kept when the block exits without
        an error, undone otherwise."""
        ...


async def announce_stable(
    studies: StableStudies, publish: Publish, quiet_seconds: float, limit: int = STABLE_BATCH
) -> None:
    """Studies quiet for `quiet_seconds` become stable and are announced. Survives restarts:
    stability is derived from `last_instance_at` in PostgreSQL. The marks are kept only once
    the events are acknowledged: none goes unannounced (a failed publish undoes them; the
    same studies are tried next round)."""
    async with studies.mark_stable(quiet_seconds, limit) as snapshots:
        await publish([metadata_event(s, []) for s in snapshots])
    if snapshots:
        log.info("studies stable", count=len(snapshots))
