"""The indexer's stable-study round with fakes: quiet studies are announced stable, and the
marks are kept only once the announcement is acknowledged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest

from libs.contracts.events import Event, PatientAttrs, StudyMetadata, StudySnapshot
from libs.dicom.synthetic import synthetic_uid
from services.indexer.rounds import announce_stable


def snapshot(n: int) -> StudySnapshot:
    uid = synthetic_uid(f"study{n}")
    return StudySnapshot(
        study_uid=uid, revision=4, stable=True, patient=PatientAttrs(patient_id=f"P{n}"),
        modalities=["MR"], series_count=1, instance_count=3, size_bytes=300,
        storage_prefix=f"studies/{uid}/",
    )  # fmt: skip


class FakeStudies:
    """Quiet studies; marking them stable is undone when the block fails (a rollback)."""

    def __init__(self, *quiet: StudySnapshot) -> None:
        self.quiet = list(quiet)
        self.stable: list[StudySnapshot] = []
        self.asked: list[tuple[float, int]] = []

    @asynccontextmanager
    async def mark_stable(
        self, quiet_seconds: float, limit: int
    ) -> AsyncIterator[list[StudySnapshot]]:
        self.asked.append((quiet_seconds, limit))
        taken = self.quiet[:limit]
        yield taken
        self.stable += taken  # reached only when the block succeeded: committed
        del self.quiet[: len(taken)]


class Published(list[Event]):
    async def __call__(self, events: Sequence[Event]) -> None:
        self.extend(events)


async def test_quiet_studies_are_announced_stable() -> None:
    quiet = [snapshot(n) for n in range(3)]
    studies, published = FakeStudies(*quiet), Published()
    await announce_stable(studies, published, 120.0, limit=2)
    assert studies.asked == [(120.0, 2)]
    assert studies.stable == quiet[:2] and studies.quiet == quiet[2:]
    assert all(isinstance(e, StudyMetadata) for e in published)
    assert [e.model_dump(include=set(StudySnapshot.model_fields)) for e in published] == [
        s.model_dump() for s in quiet[:2]
    ]
    assert [(e.source, e.correlation_ids, e.key()) for e in published] == [
        ("indexer", [], s.study_uid.encode()) for s in quiet[:2]
    ]
    await announce_stable(studies, published, 120.0, limit=2)
    assert studies.stable == quiet and len(published) == 3


async def test_a_failed_announcement_keeps_the_studies_for_the_next_round() -> None:
    quiet = [snapshot(1)]
    studies = FakeStudies(*quiet)

    async def away(events: Sequence[Event]) -> None:
        raise ConnectionError("broker away")

    with pytest.raises(ConnectionError):  # the runtime logs it; the next round retries
        await announce_stable(studies, away, 60.0)
    assert studies.stable == [] and studies.quiet == quiet
    published = Published()
    await announce_stable(studies, published, 60.0)
    assert studies.stable == quiet and len(published) == 1


async def test_no_quiet_study_announces_nothing() -> None:
    studies, published = FakeStudies(), Published()
    await announce_stable(studies, published, 60.0)
    assert published == [] and studies.asked == [(60.0, 200)]
