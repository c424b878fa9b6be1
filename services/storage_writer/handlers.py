"""Copy unique instances byte for byte to canonical storage, conflicts to their own prefix."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from libs.contracts.errors import PermanentError
from libs.contracts.events import Event, InstanceStored, InstanceUnique
from libs.kafka.consumer import Outcome
from libs.storage import ObjectStore, conflict_key, instance_key
from libs.storage.file_uri import local_source


def storage_key(event: InstanceUnique) -> str:
    h = event.header
    try:
        if event.disposition == "conflict":
            return conflict_key(h.instance.sop_instance_uid, event.hashes.content_sha256)
        return instance_key(h.study.study_uid, h.series.series_uid, h.instance.sop_instance_uid)
    except ValueError as exc:
        raise PermanentError(str(exc)) from exc


async def handle_unique(event: InstanceUnique, *, storage: ObjectStore) -> list[Event]:
    key = storage_key(event)
    try:
        stored = await storage.put_file(
            key, local_source(event.file.uri), expected_sha256=event.hashes.file_sha256
        )
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise PermanentError(f"cannot read source {event.file.uri}: {exc.strerror}") from exc
    return [
        InstanceStored(
            correlation_id=event.correlation_id,
            source=event.source,
            file=event.file,
            header=event.header,
            hashes=event.hashes,
            disposition=event.disposition,
            related_sop_instance_uid=event.related_sop_instance_uid,
            storage_url=stored.url,
        )
    ]


async def handle_unique_batch(
    events: Sequence[InstanceUnique], *, storage: ObjectStore
) -> list[Outcome]:
    """The batch's copies at once (each fsynced before it is renamed into place); a copy
    that fails is that message's outcome, retried or dead-lettered alone."""
    results = await asyncio.gather(
        *(handle_unique(e, storage=storage) for e in events), return_exceptions=True
    )
    out: list[Outcome] = []
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result  # cancelled: stopping
        out.append(result)
    return out
