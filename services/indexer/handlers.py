"""Index stored instances, record duplicates and dead letters as final outcomes, and
announce every study change on `dicom.metadata.v1`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from libs.contracts.events import (
    DeadLetter,
    Event,
    InstanceDuplicated,
    InstanceStored,
    StudyMetadata,
    StudySnapshot,
)
from libs.contracts.events import metadata_event as index_metadata_event

SOURCE = "indexer"
# Consumers of dicom.stored.v1 that produce derived data (previews) or forward instances
# (routing) also dead-letter to dicom.stored.v1.dlq; their failures say nothing about the
# file's ingest outcome.
NOT_INGEST_STAGES = frozenset({"jpg-converter", "router"})


class IndexPort(Protocol):
    async def index_many(self, events: Sequence[InstanceStored]) -> dict[str, StudySnapshot]:
        """Index a batch in one transaction; the state of each study a non-conflict event
        touched."""
        ...

    async def duplicates_many(self, events: Sequence[InstanceDuplicated]) -> None: ...
    async def failed(self, file_id: int, stage: str, reason: str) -> None: ...


def metadata_event(snapshot: StudySnapshot, correlation_ids: list[str]) -> StudyMetadata:
    return index_metadata_event(snapshot, correlation_ids, source=SOURCE)


async def handle_stored_batch(
    events: Sequence[InstanceStored], *, index: IndexPort
) -> list[list[Event]]:
    """Index the batch, then announce each study it changed once, with its state after the
    batch, on its last event. Always re-announced: if an earlier attempt committed the index
    but crashed before its event was acknowledged, this is how the event goes out."""
    snapshots = await index.index_many(events)
    last: dict[str, int] = {}
    correlation_ids: dict[str, list[str]] = {}
    for n, e in enumerate(events):
        if e.disposition != "conflict":
            uid = e.header.study.study_uid
            last[uid] = n
            correlation_ids.setdefault(uid, []).append(e.correlation_id)
    out: list[list[Event]] = [[] for _ in events]
    for uid, n in last.items():
        if (snapshot := snapshots.get(uid)) is not None:
            out[n].append(metadata_event(snapshot, correlation_ids[uid]))
    return out


async def handle_duplicate_batch(
    events: Sequence[InstanceDuplicated], *, index: IndexPort
) -> list[list[Event]]:
    await index.duplicates_many(events)
    return [[] for _ in events]


async def handle_dead_letter(letter: DeadLetter, *, index: IndexPort) -> list[Event]:
    """A dead-lettered file has reached its final outcome: failed, with the reason."""
    if letter.file_id is not None and letter.stage not in NOT_INGEST_STAGES:
        await index.failed(letter.file_id, letter.stage, f"{letter.error_type}: {letter.error}")
    return []
