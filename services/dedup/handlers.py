"""Dedup: same UID + same content is a duplicate (unless its header is a correction: a
revision, ADR 0025); same UID + other content a conflict kept aside; same content under
another UID is stored and flagged."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from libs.contracts.events import Event, InstanceDuplicated, InstanceExtracted, InstanceUnique
from libs.db.dedup import Claim

ClaimFn = Callable[[InstanceExtracted], Awaitable[Claim]]
# The claims of a batch, in one transaction: one verdict per event, in order.
ClaimManyFn = Callable[[Sequence[InstanceExtracted]], Awaitable[list[Claim]]]


def decide(event: InstanceExtracted, verdict: Claim) -> Event:
    common = {
        "correlation_id": event.correlation_id,
        "source": event.source,
        "file": event.file,
        "header": event.header,
        "hashes": event.hashes,
    }
    if verdict.verdict == "duplicate":
        return InstanceDuplicated(**common)
    return InstanceUnique(
        **common,
        disposition=verdict.verdict,
        related_sop_instance_uid=verdict.related_sop_instance_uid,
    )


async def handle_extracted(event: InstanceExtracted, *, claim: ClaimFn) -> list[Event]:
    return [decide(event, await claim(event))]


async def handle_extracted_batch(
    events: Sequence[InstanceExtracted], *, claim_many: ClaimManyFn
) -> list[list[Event]]:
    verdicts = await claim_many(events)
    return [[decide(e, v)] for e, v in zip(events, verdicts, strict=True)]
