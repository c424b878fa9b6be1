"""Dedup: same UID + same content is a duplicate; same UID + other content a conflict kept
aside; same content under another UID is stored and flagged."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from libs.contracts.events import Event, InstanceDuplicated, InstanceExtracted, InstanceUnique
from libs.db.dedup import Claim

ClaimFn = Callable[[InstanceExtracted], Awaitable[Claim]]


async def handle_extracted(event: InstanceExtracted, *, claim: ClaimFn) -> list[Event]:
    verdict = await claim(event)
    common = {
        "correlation_id": event.correlation_id,
        "source": event.source,
        "file": event.file,
        "header": event.header,
        "hashes": event.hashes,
    }
    if verdict.verdict == "duplicate":
        return [InstanceDuplicated(**common)]
    return [
        InstanceUnique(
            **common,
            disposition=verdict.verdict,
            related_sop_instance_uid=verdict.related_sop_instance_uid,
        )
    ]
