"""Index stored instances, record duplicates and dead letters as final outcomes, and
announce every study change on `dicom.metadata.v1`."""

from __future__ import annotations

from typing import Protocol

from libs.contracts.events import (
    DeadLetter,
    Event,
    InstanceDuplicated,
    InstanceStored,
    StudyMetadata,
)
from libs.db.index import StudySnapshot
from libs.db.index import metadata_event as index_metadata_event

SOURCE = "indexer"
# Consumers of dicom.stored.v1 that produce derived data (previews) also dead-letter to
# dicom.stored.v1.dlq; their failures say nothing about the file's ingest outcome.
NOT_INGEST_STAGES = frozenset({"jpg-converter"})


class IndexPort(Protocol):
    async def index(self, event: InstanceStored) -> StudySnapshot | None: ...
    async def duplicate(self, event: InstanceDuplicated) -> None: ...
    async def failed(self, file_id: int, stage: str, reason: str) -> None: ...


def metadata_event(snapshot: StudySnapshot, correlation_ids: list[str]) -> StudyMetadata:
    return index_metadata_event(snapshot, correlation_ids, source=SOURCE)


async def handle_stored(event: InstanceStored, *, index: IndexPort) -> list[Event]:
    """Always re-announce the study's current state: if an earlier attempt committed the
    index but crashed before its event was acknowledged, this is how the event goes out."""
    snapshot = await index.index(event)
    if snapshot is None:
        return []
    return [metadata_event(snapshot, [event.correlation_id])]


async def handle_duplicate(event: InstanceDuplicated, *, index: IndexPort) -> list[Event]:
    await index.duplicate(event)
    return []


async def handle_dead_letter(letter: DeadLetter, *, index: IndexPort) -> list[Event]:
    """A dead-lettered file has reached its final outcome: failed, with the reason."""
    if letter.file_id is not None and letter.stage not in NOT_INGEST_STAGES:
        await index.failed(letter.file_id, letter.stage, f"{letter.error_type}: {letter.error}")
    return []
