"""Copy unique instances byte for byte to canonical storage, conflicts and header revisions
to their own prefixes (a polyglot preamble the operator allows is the one change: it is
stored zeroed)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from libs.contracts.errors import PermanentError, SourceGone
from libs.contracts.events import Event, InstanceStored, InstanceUnique
from libs.dicom.preamble import zeroed_copy
from libs.kafka.consumer import Outcome
from libs.runtime.logging import get_logger
from libs.storage import ObjectStore, conflict_key, instance_key
from libs.storage.base import PutRequest, StoredObject, put_files, revision_key
from libs.storage.file_uri import local_source
from libs.storage.local import LocalStore

log = get_logger(__name__)


def storage_key(event: InstanceUnique) -> str:
    h = event.header
    try:
        if event.disposition == "conflict":
            return conflict_key(h.instance.sop_instance_uid, event.hashes.content_sha256)
        if event.disposition == "revision":
            return revision_key(h.instance.sop_instance_uid, event.hashes.file_sha256)
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
    except FileNotFoundError as exc:
        raise SourceGone(f"cannot read source {event.file.uri}: {exc.strerror}") from exc
    except (PermissionError, IsADirectoryError) as exc:
        raise PermanentError(f"cannot read source {event.file.uri}: {exc.strerror}") from exc
    return stored_event(event, stored.url)


def stored_event(event: InstanceUnique, url: str) -> list[Event]:
    return [
        InstanceStored(
            correlation_id=event.correlation_id,
            source=event.source,
            file=event.file,
            header=event.header,
            hashes=event.hashes,
            disposition=event.disposition,
            related_sop_instance_uid=event.related_sop_instance_uid,
            storage_url=url,
        )
    ]


async def handle_unique_batch(
    events: Sequence[InstanceUnique], *, storage: ObjectStore
) -> list[Outcome]:
    """The batch's copies in one go (`put_files`: on local disk one flush for all the
    copies before any is renamed into place, one for the names); a copy that fails is that
    message's outcome, retried or dead-lettered alone. A polyglot stored zeroed (rare, and
    only when the operator allows it) takes the one-file path with its zeroed copy."""
    out: list[Outcome | None] = [None] * len(events)
    todo: list[tuple[int, PutRequest]] = []
    for n, event in enumerate(events):
        if event.hashes.preamble_zeroed:
            try:
                out[n] = await handle_unique(event, storage=storage)
            except Exception as exc:  # that message's outcome, like a failed copy
                out[n] = exc
            continue
        try:
            source = local_source(event.file.uri)
            h = event.hashes
            todo.append((n, PutRequest(storage_key(event), source, h.file_sha256, h.source_stamp)))
        except PermanentError as exc:
            out[n] = exc
    results = await put_files(storage, [request for _, request in todo])
    for (n, _), result in zip(todo, results, strict=True):
        out[n] = (
            stored_event(events[n], result.url)
            if isinstance(result, StoredObject)
            else (_unreadable(events[n], result))
        )
    return [o for o in out if o is not None]


def _unreadable(event: InstanceUnique, exc: Exception) -> Exception:
    if isinstance(exc, FileNotFoundError):
        return SourceGone(f"cannot read source {event.file.uri}: {exc.strerror}")
    if isinstance(exc, (PermissionError, IsADirectoryError)):
        return PermanentError(f"cannot read source {event.file.uri}: {exc.strerror}")
    return exc


async def sweep_partial(store: LocalStore, older_than_seconds: float) -> None:
    """A periodic round: temp files of writes cut short (a writer killed mid-write) go."""
    removed = await asyncio.to_thread(store.sweep_partial, older_than_seconds)
    if removed:
        log.info("temp files of interrupted writes removed", count=removed)
