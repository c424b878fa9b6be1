"""Event models: one frozen pydantic model per event, each bound to its topic.

Every event carries the envelope (`event_id`, `correlation_id`, `occurred_at`,
`schema_version`, `source`). Kafka carries references to bytes (claim-check:
`uri`), never DICOM bytes. A breaking change is a new model and a new topic
version, never an edit of a v1 model; `schemas/` is generated from these and a
test fails when they drift.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field


def _now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Event(BaseModel):
    """The envelope every event carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    TOPIC: ClassVar[str] = ""

    event_id: str = Field(default_factory=new_id, description="Unique id of this event.")
    correlation_id: str = Field(description="Id that follows one piece of work across stages.")
    occurred_at: datetime = Field(default_factory=_now)
    schema_version: int = 1
    source: str = Field(description="Where the work came from, e.g. 'nas', 'api', 'reconciler'.")

    def key(self) -> bytes | None:
        """Kafka message key: StudyInstanceUID once known, so a study stays on one partition."""
        return None


class FileRef(BaseModel):
    """Where a discovered file is and which ledger row tracks it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file_id: int = Field(
        description="Ledger row (ingest_files.id) that tracks this file's outcome."
    )
    uri: str = Field(description="Claim-check reference to the bytes, e.g. file:///nas/a/b.dcm.")
    size: int = Field(ge=0)
    task_id: str | None = Field(default=None, description="Import task this file belongs to.")


class FileDiscovered(Event):
    """A source found a file that may be a DICOM instance."""

    TOPIC: ClassVar[str] = "dicom.discovered.v1"

    file: FileRef
    origin: str = Field(description="Human-readable origin, e.g. the NAS path or calling AE.")


class RecordedFile(Protocol):
    """A file as the ledger recorded it (`libs.db.ledger.LedgerRow`)."""

    @property
    def id(self) -> int: ...
    @property
    def source(self) -> str: ...
    @property
    def uri(self) -> str: ...
    @property
    def origin(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def correlation_id(self) -> str: ...
    @property
    def task_id(self) -> str | None: ...


def discovered_event(row: RecordedFile) -> FileDiscovered:
    """The discovery event for a ledger row (first emission and re-emission alike)."""
    return FileDiscovered(
        correlation_id=row.correlation_id,
        source=row.source,
        file=FileRef(file_id=row.id, uri=row.uri, size=row.size, task_id=row.task_id),
        origin=row.origin,
    )


class PatientAttrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""


class StudyAttrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    study_uid: str
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_description: str = ""
    study_id: str = ""
    referring_physician: str = ""


class SeriesAttrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    series_uid: str
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part: str = ""


class InstanceAttrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sop_instance_uid: str
    sop_class_uid: str = ""
    instance_number: int | None = None
    transfer_syntax_uid: str = ""
    specific_character_set: str = ""
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None


class DicomHeader(BaseModel):
    """What the extractor read from one instance's header, decoded to text."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patient: PatientAttrs
    study: StudyAttrs
    series: SeriesAttrs
    instance: InstanceAttrs
    dicom_json: str | None = Field(
        default=None,
        description="The whole header in the DICOM JSON model (PS3.18 F), bulk data as "
        "BulkDataURIs relative to the instance's WADO-RS URL (bulkdata/<tag>); absent when "
        "it could not be made or is too large (the API then reads the stored file).",
    )

    def indexed_digest(self) -> str:
        """SHA-256 of what the index holds of this header (patient, study, series and
        instance attributes; not how they were encoded: transfer syntax, character set, nor
        the DICOM JSON): two copies of an instance differing here are two revisions."""
        attrs = self.model_dump(
            mode="json",
            exclude={
                "dicom_json": True,
                "instance": {"transfer_syntax_uid", "specific_character_set"},
            },
        )
        text = json.dumps(attrs, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


class Hashes(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    file_sha256: str = Field(description="SHA-256 of the whole file as stored at the source.")
    content_sha256: str = Field(
        description="SHA-256 of the pixel data element's bytes as stored, or of the dataset "
        "without file meta when there is no pixel data."
    )
    has_pixels: bool
    preamble_zeroed: bool = Field(
        default=False,
        description="The source's preamble was neither zeros nor a TIFF header and the "
        "operator allows such files: the stored copy has it zeroed, and file_sha256 is of "
        "that copy.",
    )
    source_stamp: str | None = Field(
        default=None,
        description="The source file as it was when hashed: `inode:size:mtime_ns:ctime_ns`, "
        "recorded only when unchanged over the hashing and at least "
        "2 s old (older than any timestamp granularity; 20 ms for a file the DICOM receiver "
        "closed before announcing it, ADR 0031). A copy made while the source "
        "still shows this stamp is of the hashed bytes, so the storage-writer does not hash "
        "it again; absent, it does.",
    )


class InstanceEvent(Event):
    """What every event about one instance carries: the file, its header and its hashes."""

    file: FileRef
    header: DicomHeader
    hashes: Hashes

    def key(self) -> bytes | None:
        return self.header.study.study_uid.encode()


class InstanceExtracted(InstanceEvent):
    """The extractor parsed a file's header and hashed it."""

    TOPIC: ClassVar[str] = "dicom.extracted.v1"


# "revision": the same SOPInstanceUID and pixels with a corrected header (ADR 0025).
Disposition = Literal["new", "same_content_other_uid", "conflict", "revision"]


class InstanceUnique(InstanceEvent):
    """Dedup decided these bytes must be stored: new, new-but-flagged, a conflict kept aside,
    or a revision (the same instance with a corrected header, kept beside the original)."""

    TOPIC: ClassVar[str] = "dicom.unique.v1"

    disposition: Disposition
    related_sop_instance_uid: str | None = Field(
        default=None,
        description="For same_content_other_uid: the first UID seen with this content; "
        "for conflict: the UID whose stored content differs; for revision: the instance's own "
        "UID.",
    )


class InstanceDuplicated(InstanceEvent):
    """Dedup found the same SOPInstanceUID with the same content already claimed."""

    TOPIC: ClassVar[str] = "dicom.duplicate.v1"


class InstanceStored(InstanceEvent):
    """The storage writer holds a verified byte-for-byte copy."""

    TOPIC: ClassVar[str] = "dicom.stored.v1"

    disposition: Disposition
    related_sop_instance_uid: str | None = None
    storage_url: str = Field(description="Where the canonical (or conflict) copy lives.")


def stored_object_event(
    row: RecordedFile,
    *,
    header: DicomHeader,
    hashes: Hashes,
    disposition: Disposition,
    related_sop_instance_uid: str | None = None,
) -> InstanceStored:
    """An object found in storage and recorded in the ledger as a file (`dicomflow
    rebuild-index`): the file it was read from is the stored copy itself."""
    return InstanceStored(
        correlation_id=row.correlation_id,
        source=row.source,
        file=FileRef(file_id=row.id, uri=row.uri, size=row.size, task_id=row.task_id),
        header=header,
        hashes=hashes,
        disposition=disposition,
        related_sop_instance_uid=related_sop_instance_uid,
        storage_url=row.uri,
    )


class StudySnapshot(BaseModel):
    """A study as the index holds it now: `dicom.metadata.v1` without the envelope."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study_uid: str
    revision: int = Field(ge=1, description="Monotonic per study; consumers keep the highest.")
    stable: bool = Field(description="True once no new instance arrived for STUDY_STABLE_SECONDS.")
    patient: PatientAttrs
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_description: str = ""
    modalities: list[str] = Field(default_factory=list)
    series_count: int
    instance_count: int
    size_bytes: int
    storage_prefix: str


class StudyMetadata(StudySnapshot, Event):
    """Public, study-level: one event per study change, ordered by `revision` per study."""

    TOPIC: ClassVar[str] = "dicom.metadata.v1"

    correlation_ids: list[str] = Field(
        default_factory=list, description="Correlation ids of the work that caused this change."
    )

    def key(self) -> bytes | None:
        return self.study_uid.encode()


def metadata_event(
    snapshot: StudySnapshot, correlation_ids: list[str], *, source: str
) -> StudyMetadata:
    """The public `dicom.metadata.v1` event for a study's current state."""
    return StudyMetadata(
        correlation_id=correlation_ids[0] if correlation_ids else snapshot.study_uid,
        source=source,
        correlation_ids=correlation_ids,
        **dict(snapshot),
    )


class PreviewImage(BaseModel):
    """One JPEG written next to the canonical copy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frame: int = Field(ge=0, description="Frame index, 0 = first.")
    kind: Literal["preview", "thumbnail"]
    url: str
    size: int = Field(ge=0)
    width: int
    height: int


class InstancePreviewed(Event):
    """The JPG converter's outcome for one stored instance: JPEGs written, or why not."""

    TOPIC: ClassVar[str] = "dicom.preview.v1"

    file_id: int = Field(description="Ledger row of the file the instance came from.")
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    status: Literal["rendered", "unrenderable", "skipped"]
    reason: str = Field(default="", description="Why nothing was rendered (empty when rendered).")
    frames: int | None = Field(default=None, description="Frames in the object, when decoded.")
    voi: str = Field(
        default="",
        description="How grey levels were chosen: file (window), lut (VOI LUT), auto, colour.",
    )
    images: list[PreviewImage] = Field(default_factory=list)

    def key(self) -> bytes | None:
        return self.study_uid.encode()


class ArchiveBuilt(Event):
    """The packager holds a downloadable archive of a study (or one series) at a revision."""

    TOPIC: ClassVar[str] = "dicom.archive.v1"

    study_uid: str
    series_uid: str | None = Field(default=None, description="Set for a one-series archive.")
    format: Literal["tar.zst", "zip", "tar"]
    revision: str = Field(description="Archive revision key (its ETag): changes with the study.")
    size_bytes: int = Field(ge=0)
    instance_count: int = Field(ge=0)
    built_seconds: float = Field(ge=0)

    def key(self) -> bytes | None:
        return self.study_uid.encode()


class ImportRequested(Event):
    """An operator asked for a folder to be imported as a task."""

    TOPIC: ClassVar[str] = "import.requested.v1"

    task_id: str
    source_path: str


class DeadLetter(BaseModel):
    """What lands on `<topic>.dlq`: the original message and why it failed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    original_topic: str
    partition: int
    offset: int
    key: str | None = None
    payload: str = Field(description="The original message value, decoded as UTF-8 (lossy).")
    headers: dict[str, str] = Field(default_factory=dict)
    error: str = Field(description="Why it failed, in words a person understands.")
    error_type: str
    stage: str
    attempts: int
    correlation_id: str | None = None
    file_id: int | None = None
    failed_at: datetime = Field(default_factory=_now)


PIPELINE_EVENTS: tuple[type[Event], ...] = (
    FileDiscovered,
    InstanceExtracted,
    InstanceUnique,
    InstanceDuplicated,
    InstanceStored,
    StudyMetadata,
    ImportRequested,
    InstancePreviewed,
    ArchiveBuilt,
)
