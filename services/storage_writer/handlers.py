"""Copy unique instances byte for byte to canonical storage, conflicts to their own prefix
(a polyglot preamble the operator allows is the one change: it is stored zeroed)."""

from __future__ import annotations

import asyncio
import contextlib

from libs.contracts.errors import PermanentError
from libs.contracts.events import Event, InstanceStored, InstanceUnique
from libs.dicom.preamble import zeroed_copy
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
        with contextlib.ExitStack() as stack:
            source = local_source(event.file.uri)
            if event.hashes.preamble_zeroed:  # a polyglot the operator allows: zeroed copy
                source = await asyncio.to_thread(stack.enter_context, zeroed_copy(source))
            stored = await storage.put_file(key, source, expected_sha256=event.hashes.file_sha256)
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
