"""The core stages' handlers with fakes: extractor, dedup, storage writer, indexer. Each test
names what the handler decides; the bytes, keys and events are checked, not that a call ran."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from libs.contracts.errors import DicomParseError, NotDicomError, PermanentError, SourceGone
from libs.contracts.events import (
    DeadLetter,
    DicomHeader,
    Event,
    FileDiscovered,
    FileRef,
    Hashes,
    InstanceDuplicated,
    InstanceExtracted,
    InstanceStored,
    InstanceUnique,
    PatientAttrs,
    StudyMetadata,
    StudySnapshot,
)
from libs.db.dedup import Claim, Verdict
from libs.dicom.extract import extract_file
from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from libs.storage import ObjectStore, conflict_key, instance_key
from libs.storage.base import PutRequest, StoredObject
from libs.storage.local import LocalStore, file_url
from libs.storage.memory import MemoryStore
from services.dedup.handlers import handle_extracted
from services.extractor.handlers import Parsed, handle_discovered_batch
from services.indexer.handlers import (
    IndexPort,
    handle_dead_letter,
    handle_duplicate_batch,
    handle_stored_batch,
)
from services.storage_writer.handlers import handle_unique, handle_unique_batch

STUDY, SERIES, SOP = synthetic_uid("study"), synthetic_uid("series"), synthetic_uid("sop")


def instance(tmp_path: Path, name: str = "a.dcm", sop: str = SOP) -> Path:
    path = tmp_path / name
    write_instance(
        path,
        make_dataset(
            patient_id="P1",
            patient_name="Test^Patient",
            study_uid=STUDY,
            series_uid=SERIES,
            sop_uid=sop,
            rows=8,
            columns=8,
        ),
    )
    return path


def discovered(path: Path, file_id: int = 7) -> FileDiscovered:
    return FileDiscovered(
        correlation_id="corr-1",
        source="nas",
        file=FileRef(file_id=file_id, uri=path.as_uri(), size=path.stat().st_size, task_id=None),
        origin=str(path),
    )


async def parse_here(path: str) -> tuple[DicomHeader, Hashes]:
    """The extractor's parser without the worker process around it."""
    return extract_file(path)


# The stages handle batches; these tests give them a batch of one message and look at its
# outcome (the events it emits, or the error it is retried or dead-lettered with).


async def handle_discovered(
    event: FileDiscovered, *, parse: Callable[[str], Awaitable[tuple[DicomHeader, Hashes]]]
) -> list[Event]:
    async def parse_many(paths: list[str]) -> list[Parsed]:
        out: list[Parsed] = []
        for path in paths:
            try:
                out.append(await parse(path))
            except (PermanentError, OSError) as exc:  # what extract_many reports per file
                out.append(exc)
        return out

    (outcome,) = await handle_discovered_batch([event], parse_many=parse_many)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def handle_stored(event: InstanceStored, *, index: IndexPort) -> list[Event]:
    (outcome,) = await handle_stored_batch([event], index=index)
    return outcome


async def handle_duplicate(event: InstanceDuplicated, *, index: IndexPort) -> list[Event]:
    (outcome,) = await handle_duplicate_batch([event], index=index)
    return outcome


async def extracted(path: Path, file_id: int = 7) -> InstanceExtracted:
    (event,) = await handle_discovered(discovered(path, file_id), parse=parse_here)
    assert isinstance(event, InstanceExtracted)
    return event


def unique(
    event: InstanceExtracted, disposition: str, related: str | None = None
) -> InstanceUnique:
    return InstanceUnique(
        correlation_id=event.correlation_id,
        source=event.source,
        file=event.file,
        header=event.header,
        hashes=event.hashes,
        disposition=disposition,  # type: ignore[arg-type]
        related_sop_instance_uid=related,
    )


# --- extractor ---------------------------------------------------------------------------


async def test_extractor_emits_the_header_and_hashes_keyed_by_study(tmp_path: Path) -> None:
    path = instance(tmp_path)
    event = await extracted(path)
    assert event.file.uri == path.as_uri() and event.file.file_id == 7
    assert (event.correlation_id, event.source) == ("corr-1", "nas")
    assert event.header.instance.sop_instance_uid == SOP
    assert event.header.study.study_uid == STUDY
    assert event.hashes.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert event.key() == STUDY.encode()


async def test_extractor_a_vanished_file_is_a_permanent_error(tmp_path: Path) -> None:
    path = instance(tmp_path)
    event = discovered(path)
    path.unlink()
    with pytest.raises(PermanentError, match="source file is gone"):
        await handle_discovered(event, parse=parse_here)


async def test_extractor_rejects_a_uri_it_cannot_read(tmp_path: Path) -> None:
    event = discovered(instance(tmp_path)).model_copy(
        update={"file": FileRef(file_id=1, uri="s3://bucket/a.dcm", size=1)}
    )
    with pytest.raises(PermanentError, match="unsupported source URI scheme"):
        await handle_discovered(event, parse=parse_here)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"", NotDicomError),
        (b"hello, not DICOM", NotDicomError),
        (b"\0" * 128 + b"DICM", DicomParseError),
    ],
)
async def test_extractor_a_file_that_is_not_dicom_is_a_permanent_error(
    tmp_path: Path, content: bytes, error: type[Exception]
) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(content)
    with pytest.raises(error):
        await handle_discovered(discovered(path), parse=parse_here)
    assert issubclass(error, PermanentError)


# --- dedup ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdict", "related", "emitted"),
    [
        ("new", None, InstanceUnique),
        ("same_content_other_uid", "1.2.3", InstanceUnique),
        ("conflict", SOP, InstanceUnique),
        ("revision", SOP, InstanceUnique),
        ("duplicate", None, InstanceDuplicated),
    ],
)
async def test_dedup_every_verdict(
    tmp_path: Path, verdict: Verdict, related: str | None, emitted: type
) -> None:
    event = await extracted(instance(tmp_path))
    asked: list[InstanceExtracted] = []

    async def claim(e: InstanceExtracted) -> Claim:
        asked.append(e)
        return Claim(verdict, related)

    (out,) = await handle_extracted(event, claim=claim)
    assert asked == [event]
    assert type(out) is emitted
    assert (out.file, out.header, out.hashes) == (event.file, event.header, event.hashes)
    assert (out.correlation_id, out.source, out.key()) == ("corr-1", "nas", STUDY.encode())
    if isinstance(out, InstanceUnique):
        assert (out.disposition, out.related_sop_instance_uid) == (verdict, related)


async def test_dedup_a_failed_claim_emits_nothing(tmp_path: Path) -> None:
    event = await extracted(instance(tmp_path))

    async def claim(e: InstanceExtracted) -> Claim:
        raise ConnectionError("database away")

    with pytest.raises(ConnectionError):
        await handle_extracted(event, claim=claim)


# --- storage writer ------------------------------------------------------------------------


async def test_storage_writer_copies_the_bytes_to_the_canonical_key(tmp_path: Path) -> None:
    path = instance(tmp_path)
    event = await extracted(path)
    store = MemoryStore()
    (out,) = await handle_unique(unique(event, "new"), storage=store)
    key = instance_key(STUDY, SERIES, SOP)
    assert store.objects == {key: path.read_bytes()}
    assert isinstance(out, InstanceStored)
    assert out.storage_url == store.url_for(key)
    assert (out.disposition, out.file, out.hashes) == ("new", event.file, event.hashes)


async def test_storage_writer_keeps_a_conflict_under_its_own_key(tmp_path: Path) -> None:
    first, second = instance(tmp_path, "a.dcm"), tmp_path / "b.dcm"
    write_instance(  # the same SOPInstanceUID with other pixels
        second,
        make_dataset(
            patient_id="P1",
            patient_name="Test^Patient",
            study_uid=STUDY,
            series_uid=SERIES,
            sop_uid=SOP,
            rows=16,
            columns=16,
        ),
    )
    store = MemoryStore()
    await handle_unique(unique(await extracted(first), "new"), storage=store)
    other = await extracted(second, file_id=8)
    (out,) = await handle_unique(unique(other, "conflict", SOP), storage=store)
    key = conflict_key(SOP, other.hashes.content_sha256)
    assert store.objects[instance_key(STUDY, SERIES, SOP)] == first.read_bytes()
    assert store.objects[key] == second.read_bytes()
    assert isinstance(out, InstanceStored)
    assert (out.disposition, out.storage_url) == ("conflict", store.url_for(key))


async def test_storage_writer_a_missing_source_is_permanent_and_writes_nothing(
    tmp_path: Path,
) -> None:
    path = instance(tmp_path)
    event = unique(await extracted(path), "new")
    path.unlink()
    store = MemoryStore()
    with pytest.raises(PermanentError):
        await handle_unique(event, storage=store)
    assert store.objects == {}


async def test_storage_writer_refuses_a_source_changed_since_extraction(tmp_path: Path) -> None:
    path = instance(tmp_path)
    event = unique(await extracted(path), "new")
    path.write_bytes(path.read_bytes() + b"\0\0")
    store = MemoryStore()
    with pytest.raises(PermanentError, match="changed since it was extracted"):
        await handle_unique(event, storage=store)
    assert store.objects == {}


async def test_storage_writer_emits_nothing_when_the_key_holds_other_content(
    tmp_path: Path,
) -> None:
    """A conflict that reached the canonical key (never overwrite): a permanent error, no event."""
    path = instance(tmp_path)
    event = unique(await extracted(path), "new")
    store = MemoryStore()
    store.objects[instance_key(STUDY, SERIES, SOP)] = b"other content"
    with pytest.raises(PermanentError, match="refusing to overwrite"):
        await handle_unique(event, storage=store)
    assert store.objects[instance_key(STUDY, SERIES, SOP)] == b"other content"


async def test_storage_writer_a_uid_that_cannot_be_a_key_is_permanent(tmp_path: Path) -> None:
    event = unique(await extracted(instance(tmp_path)), "new")
    bad = event.header.model_copy(
        update={"study": event.header.study.model_copy(update={"study_uid": "../../etc"})}
    )
    with pytest.raises(PermanentError):
        await handle_unique(event.model_copy(update={"header": bad}), storage=MemoryStore())


class BatchingStore(MemoryStore):
    """A store with the batch method (`put_files`), as the production stores have (the
    metered store around local disk or GCS): each call's keys are recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    async def put_files(self, items: Sequence[PutRequest]) -> list[StoredObject | Exception]:
        self.batches.append([i.key for i in items])
        out: list[StoredObject | Exception] = []
        for i in items:
            try:
                out.append(await self.put_file(i.key, i.source, expected_sha256=i.expected_sha256))
            except Exception as exc:  # that item's outcome
                out.append(exc)
        return out


def make_store(kind: str, tmp_path: Path) -> ObjectStore:
    if kind == "memory":  # no batch method: `put_files` falls back to one put per item
        return MemoryStore()
    if kind == "batching":
        return BatchingStore()
    return LocalStore(file_url(tmp_path / "storage"))  # the real batch: group durability


async def contents(store: ObjectStore) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    async for key in store.keys():
        out[key] = b"".join([chunk async for chunk in store.read(key)])
    return out


@pytest.mark.parametrize("kind", ["memory", "batching", "local"])
async def test_storage_writer_batch_gives_each_item_its_own_outcome(
    tmp_path: Path, kind: str
) -> None:
    """The production path: one batch of a good copy, a vanished source, a source changed
    since extraction, a conflict kept aside and a canonical key holding other content."""
    sops = [synthetic_uid(f"sop{n}") for n in range(4)]
    good, gone, changed, taken = (instance(tmp_path, f"{n}.dcm", sop) for n, sop in enumerate(sops))
    clash = tmp_path / "clash.dcm"
    write_instance(  # the good copy's SOPInstanceUID with other pixels
        clash,
        make_dataset(
            patient_id="P1", patient_name="Test^Patient", study_uid=STUDY, series_uid=SERIES,
            sop_uid=sops[0], rows=16, columns=16,
        ),
    )  # fmt: skip
    events = [
        unique(await extracted(good, 1), "new"),
        unique(await extracted(gone, 2), "new"),
        unique(await extracted(changed, 3), "new"),
        unique(await extracted(clash, 4), "conflict", sops[0]),
        unique(await extracted(taken, 5), "new"),
    ]
    gone.unlink()
    changed.write_bytes(changed.read_bytes() + b"\0\0")
    store = make_store(kind, tmp_path)
    other = tmp_path / "other"
    other.write_bytes(b"other content")
    taken_key = instance_key(STUDY, SERIES, sops[3])
    await store.put_file(
        taken_key, other, expected_sha256=hashlib.sha256(b"other content").hexdigest()
    )

    outcomes = await handle_unique_batch(events, storage=store)

    assert len(outcomes) == len(events)
    good_key = instance_key(STUDY, SERIES, sops[0])
    clash_key = conflict_key(sops[0], events[3].hashes.content_sha256)
    assert await contents(store) == {
        good_key: good.read_bytes(),
        clash_key: clash.read_bytes(),
        taken_key: b"other content",
    }
    stored_ok, lost, refused, kept_aside, clashed = outcomes
    assert isinstance(stored_ok, list) and isinstance(kept_aside, list)
    for (out,), event, key in (
        (stored_ok, events[0], good_key),
        (kept_aside, events[3], clash_key),
    ):
        assert isinstance(out, InstanceStored)
        assert (out.file, out.hashes, out.disposition) == (
            event.file,
            event.hashes,
            event.disposition,
        )
        assert out.storage_url == store.url_for(key)
    assert isinstance(lost, SourceGone)
    assert isinstance(refused, PermanentError) and "changed since it was extracted" in str(refused)
    assert isinstance(clashed, PermanentError) and "refusing to overwrite" in str(clashed)
    if isinstance(
        store, BatchingStore
    ):  # one call for the batch; the vanished file never reached it
        assert store.batches == [
            [good_key, instance_key(STUDY, SERIES, sops[2]), clash_key, taken_key]
        ]


class VanishingStore(BatchingStore):
    """The source goes between the writer's check and the copy (an operator's cleanup)."""

    async def put_file(self, key: str, source: Path, *, expected_sha256: str) -> StoredObject:
        source.unlink()
        return await super().put_file(key, source, expected_sha256=expected_sha256)


async def test_storage_writer_batch_a_source_gone_during_the_copy_is_source_gone(
    tmp_path: Path,
) -> None:
    event = unique(await extracted(instance(tmp_path)), "new")
    store = VanishingStore()
    (outcome,) = await handle_unique_batch([event], storage=store)
    assert isinstance(outcome, SourceGone) and "cannot read source" in str(outcome)
    assert store.objects == {}


# --- indexer -------------------------------------------------------------------------------


class FakeIndex:
    """Returns a snapshot of every study the batch touched that it holds one of, conflicts
    included: keeping a conflict out of the announcements is the handler's own job."""

    def __init__(self, *snapshots: StudySnapshot) -> None:
        self.snapshots = {s.study_uid: s for s in snapshots}
        self.indexed: list[InstanceStored] = []
        self.duplicates: list[InstanceDuplicated] = []
        self.failures: list[tuple[int, str, str]] = []

    async def index_many(self, events: Sequence[InstanceStored]) -> dict[str, StudySnapshot]:
        self.indexed += events
        touched = {e.header.study.study_uid for e in events}
        return {uid: self.snapshots[uid] for uid in touched if uid in self.snapshots}

    async def duplicates_many(self, events: Sequence[InstanceDuplicated]) -> None:
        self.duplicates += events

    async def failed(self, file_id: int, stage: str, reason: str) -> None:
        self.failures.append((file_id, stage, reason))


SNAPSHOT = StudySnapshot(
    study_uid=STUDY,
    revision=3,
    stable=False,
    patient=PatientAttrs(patient_id="P1", patient_name="Test^Patient"),
    modalities=["CT"],
    series_count=1,
    instance_count=2,
    size_bytes=1000,
    storage_prefix=f"studies/{STUDY}/",
)


async def stored(tmp_path: Path) -> InstanceStored:
    store = MemoryStore()
    (out,) = await handle_unique(unique(await extracted(instance(tmp_path)), "new"), storage=store)
    assert isinstance(out, InstanceStored)
    return out


async def test_indexer_announces_the_study_with_the_instances_correlation_id(
    tmp_path: Path,
) -> None:
    event = await stored(tmp_path)
    index = FakeIndex(SNAPSHOT)
    (out,) = await handle_stored(event, index=index)
    assert index.indexed == [event]
    assert isinstance(out, StudyMetadata)
    assert out.model_dump(include=set(StudySnapshot.model_fields)) == SNAPSHOT.model_dump()
    assert (out.correlation_id, out.correlation_ids, out.source) == (
        "corr-1",
        ["corr-1"],
        "indexer",
    )
    assert out.key() == STUDY.encode()


async def test_indexer_emits_nothing_when_the_index_did_not_change(tmp_path: Path) -> None:
    assert await handle_stored(await stored(tmp_path), index=FakeIndex()) == []


async def test_indexer_a_conflict_is_indexed_but_never_announced(tmp_path: Path) -> None:
    """A conflict kept aside changes no study: in a batch with a stored instance, only that
    instance's study is announced, with its correlation id alone, on its own event."""
    event = await stored(tmp_path)
    other_study = synthetic_uid("other-study")
    other = SNAPSHOT.model_copy(update={"study_uid": other_study})

    def conflict(study_uid: str, correlation_id: str) -> InstanceStored:
        header = event.header.model_copy(
            update={"study": event.header.study.model_copy(update={"study_uid": study_uid})}
        )
        return event.model_copy(
            update={
                "header": header,
                "disposition": "conflict",
                "correlation_id": correlation_id,
                "related_sop_instance_uid": SOP,
            }
        )

    batch = [event, conflict(STUDY, "corr-2"), conflict(other_study, "corr-3")]
    index = FakeIndex(SNAPSHOT, other)
    announced, *rest = await handle_stored_batch(batch, index=index)
    assert index.indexed == batch
    assert rest == [[], []]
    (out,) = announced
    assert isinstance(out, StudyMetadata)
    assert (out.study_uid, out.correlation_ids) == (STUDY, ["corr-1"])


async def test_indexer_records_a_duplicate_and_emits_nothing(tmp_path: Path) -> None:
    event = await extracted(instance(tmp_path))
    dup = InstanceDuplicated(
        correlation_id="corr-1", source="nas", file=event.file, header=event.header,
        hashes=event.hashes,
    )  # fmt: skip
    index = FakeIndex(SNAPSHOT)
    assert await handle_duplicate(dup, index=index) == []
    assert index.duplicates == [dup]
    assert index.indexed == []


def letter(stage: str, file_id: int | None = 3) -> DeadLetter:
    return DeadLetter(
        original_topic="dicom.stored.v1", partition=0, offset=1, payload="{}",
        error="cannot read", error_type="PermanentError", stage=stage, attempts=1,
        file_id=file_id,
    )  # fmt: skip


async def test_indexer_a_dead_letter_is_the_files_final_failure() -> None:
    index = FakeIndex()
    assert await handle_dead_letter(letter("storage-writer"), index=index) == []
    assert index.failures == [(3, "storage-writer", "PermanentError: cannot read")]


async def test_indexer_ignores_the_converters_and_the_routers_dead_letters() -> None:
    index = FakeIndex()
    await handle_dead_letter(letter("jpg-converter"), index=index)
    await handle_dead_letter(letter("router"), index=index)
    await handle_dead_letter(letter("indexer"), index=index)
    assert [(f, s) for f, s, _ in index.failures] == [(3, "indexer")]


async def test_indexer_a_dead_letter_without_a_file_records_nothing() -> None:
    index = FakeIndex()
    await handle_dead_letter(letter("extractor", file_id=None), index=index)
    assert index.failures == []
