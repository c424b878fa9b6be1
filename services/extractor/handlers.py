"""Read discovered files' headers and hashes (in isolated parser processes); files of an
import task that was paused or cancelled are stopped first (`Gate`), unread."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from libs.contracts.errors import PermanentError
from libs.contracts.events import DicomHeader, Event, FileDiscovered, Hashes, InstanceExtracted
from libs.kafka.consumer import Outcome
from libs.storage.file_uri import local_path

Parsed = tuple[DicomHeader, Hashes] | Exception
# Parses several files (a round trip per parser process, not per file): per path its
# header and hashes, or the error it failed with.
ParseMany = Callable[[list[str]], Awaitable[list[Parsed]]]
# Given (file id, task id) of the batch's task files, the file ids to stop: set aside for a
# paused task, ended `cancelled` for a cancelled one (the gate records which).
Gate = Callable[[list[tuple[int, str]]], Awaitable[frozenset[int]]]


async def handle_discovered_batch(
    events: Sequence[FileDiscovered], *, parse_many: ParseMany, gate: Gate | None = None
) -> list[Outcome]:
    outcomes: list[Outcome | None] = [None] * len(events)
    todo: list[tuple[int, str]] = []
    tasked = [(e.file.file_id, e.file.task_id) for e in events if e.file.task_id]
    stopped = await gate(tasked) if gate is not None and tasked else frozenset()
    for n, event in enumerate(events):
        if event.file.file_id in stopped:
            outcomes[n] = []  # not read: held until resumed, or cancelled
            continue
        try:
            todo.append((n, str(local_path(event.file.uri))))  # judged where it is opened
        except PermanentError as exc:
            outcomes[n] = exc
    parsed = await parse_many([path for _, path in todo])
    for (n, _), result in zip(todo, parsed, strict=True):
        outcomes[n] = result if isinstance(result, Exception) else [extracted(events[n], *result)]
    return [o for o in outcomes if o is not None]


def extracted(event: FileDiscovered, header: DicomHeader, hashes: Hashes) -> Event:
    return InstanceExtracted(
        correlation_id=event.correlation_id,
        source=event.source,
        file=event.file,
        header=header,
        hashes=hashes,
    )
