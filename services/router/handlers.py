"""Queue each stored instance for the destinations its rules name: one row per (destination,
instance) in the same batch statement, before the offsets are committed. Sending is the
destinations' own rounds (`sender.py`), so a destination that is down delays only its queue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from libs.contracts.events import Event, InstanceStored
from libs.db.routing import Routed
from libs.dicom.uids import is_valid_uid
from libs.runtime.logging import get_logger
from services.router.rules import Facts, RoutingConfig, route

log = get_logger(__name__)


class QueuePort(Protocol):
    async def enqueue(self, rows: Sequence[Routed]) -> int:
        """Insert the rows a destination does not have yet; how many were new."""
        ...


def routed(event: InstanceStored, config: RoutingConfig) -> list[Routed]:
    """The queue rows of one stored instance. A conflicting copy (kept aside, not the
    canonical instance) is never forwarded."""
    if event.disposition == "conflict":
        return []
    h = event.header
    if not all(
        is_valid_uid(u)
        for u in (h.study.study_uid, h.series.series_uid, h.instance.sop_instance_uid)
    ):
        return []  # never stored under such UIDs: the storage writer dead-letters them
    return [
        Routed(
            destination=name,
            sop_instance_uid=h.instance.sop_instance_uid,
            study_uid=h.study.study_uid,
            series_uid=h.series.series_uid,
            sop_class_uid=h.instance.sop_class_uid,
            transfer_syntax_uid=h.instance.transfer_syntax_uid,
            storage_url=event.storage_url,
            rule=rule,
            correlation_id=event.correlation_id,
        )
        for name, rule in route(config, Facts.of(event)).items()
    ]


async def handle_stored_batch(
    events: Sequence[InstanceStored], *, config: RoutingConfig, queue: QueuePort
) -> list[list[Event]]:
    rows = [row for event in events for row in routed(event, config)]
    new = await queue.enqueue(rows)
    log.info("routed", instances=len(events), queued=new, again=len(rows) - new)
    return [[] for _ in events]
