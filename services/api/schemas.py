"""What the API accepts (query and body models, validated with clear messages) and returns."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from libs.dicom.names import search_key
from services.api.config import HARD_MAX_PAGE_SIZE

Role = Literal["clinician", "ops", "admin"]
TaskStatus = Literal[
    "pending", "running", "paused", "cancelling", "cancelled", "completed", "failed"
]
MAX_OFFSET = 1_000_000
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{8}")  # ASCII digits only


def _date(value: Any) -> Any:
    """YYYY-MM-DD or YYYYMMDD (DICOM DA) to a date; nothing else (no times, no week dates)."""
    if not isinstance(value, str):
        return value
    if not _DATE.fullmatch(value):
        raise PydanticCustomError("date_format", "Input should be a date as YYYY-MM-DD or YYYYMMDD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError("date_value", "Input is not a valid calendar date") from None


def _patient_name(value: Any) -> Any:
    if isinstance(value, str) and not search_key(value.replace("*", " ").replace("?", " ")):
        raise PydanticCustomError(
            "name_empty", "patient_name should contain at least one letter or digit"
        )
    return value


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


QueryDate = Annotated[date, BeforeValidator(_date)]
PatientName = Annotated[str, Field(min_length=1, max_length=128), BeforeValidator(_patient_name)]
Sex = Annotated[Literal["M", "F", "O"], BeforeValidator(_upper)]
Modality = Annotated[str, Field(pattern=r"^[A-Z0-9_]{1,16}$"), BeforeValidator(_upper)]
Limit = Annotated[
    int | None, Field(ge=1, le=HARD_MAX_PAGE_SIZE, description="Page size (default 50, max 500)")
]
Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET)]


class StudyQuery(BaseModel):
    """Filters of GET /v1/studies; unknown parameters are rejected so a typo never widens a
    search to every study."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    patient_name: PatientName | None = Field(
        default=None,
        description="Case-, accent- and separator-insensitive; matches the start of the name "
        "or of any word in it. `*` and `?` are wildcards.",
    )
    patient_id: str | None = Field(default=None, min_length=1, max_length=64)
    birth_date: QueryDate | None = None
    sex: Sex | None = None
    year: int | None = Field(default=None, ge=1, le=9998, description="Study year")
    study_date_from: QueryDate | None = Field(default=None, description="Inclusive")
    study_date_to: QueryDate | None = Field(default=None, description="Inclusive")
    accession_number: str | None = Field(default=None, min_length=1, max_length=64)
    modality: Modality | None = None
    limit: Limit = None
    offset: Offset = 0

    @model_validator(mode="after")
    def _date_range(self) -> StudyQuery:
        start, end = self.study_date_from, self.study_date_to
        if start and end and start > end:
            raise ValueError("study_date_from must not be after study_date_to")
        return self


class PatientOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    patient_id: str
    patient_name: str
    birth_date: date | None
    sex: str


class StudyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    study_uid: str
    study_date: date | None
    study_time: str
    accession_number: str
    study_description: str
    modalities: list[str]
    series_count: int
    instance_count: int
    size_bytes: int
    stable: bool
    revision: int
    patient: PatientOut
    source_deleted_at: datetime | None = Field(
        default=None,
        description="When the archive the study was taken from (a dcm4chee watcher) was found "
        "no longer to have it; our copy is kept. Null otherwise.",
    )
    source_deleted_from: str | None = Field(default=None, description="That archive's name.")


class StudyHit(StudyOut):
    thumbnail_url: str | None = Field(
        default=None,
        description="Thumbnail of the study's first image (first series, first instance), "
        "relative to the API root; null when the study has no image.",
    )


class StudyPage(BaseModel):
    total: int = Field(
        description="Studies matching: exact when `total_exact`, else a lower bound (the "
        "server stops counting at API_SEARCH_COUNT_LIMIT, or at the end of this page if "
        "further): show it as “1,000+”."
    )
    total_exact: bool = Field(description="False: more than `total` studies match (see `total`).")
    limit: int
    offset: int
    items: list[StudyHit]


class SeriesOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    series_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part: str
    instance_count: int
    size_bytes: int


class CorrectionOut(BaseModel):
    sop_instance_uid: str
    revision: int = Field(description="2 for an instance's first correction (1 is the original)")
    patient_id: str
    patient_name: str
    indexed_at: datetime


class StudyDetailOut(StudyOut):
    series: list[SeriesOut]
    corrections: list[CorrectionOut] = Field(
        default_factory=list,
        description="Header corrections of the study's instances (same instance, same pixels, "
        "another header), oldest first; the study's attributes are the latest ones.",
    )


class ImportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_path: str = Field(
        min_length=1,
        max_length=4096,
        description="Absolute path of a folder under one of the watcher's allowed roots.",
    )
    description: str = Field(default="", max_length=1000)

    @model_validator(mode="after")
    def _path(self) -> ImportCreate:
        if "\x00" in self.source_path:
            raise ValueError("source_path must not contain NUL bytes")
        if not self.source_path.startswith("/"):
            raise ValueError("source_path must be an absolute path")
        return self


class ImportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: TaskStatus | None = None
    limit: Limit = None
    offset: Offset = 0


class ImportAccepted(BaseModel):
    task_id: str
    status: Literal["pending"] = "pending"


class FailureOut(BaseModel):
    uri: str
    origin: str
    stage: str | None
    reason: str | None


class CountersOut(BaseModel):
    files_scanned: int
    pending: int
    new_instances: int
    flagged_same_content: int
    header_revisions: int = Field(
        description="Of new_instances: corrected headers of instances already indexed, indexed "
        "as revisions (the original kept)."
    )
    duplicates: int
    conflicts: int
    failed: int
    cancelled: int = Field(description="Files not read because the import was cancelled.")
    patients_found: int = Field(description="Patients of the studies the files belong to.")
    patients_new: int = Field(description="Of those, patients this import brought into the index.")
    failures: list[FailureOut]


class TaskOut(BaseModel):
    task_id: str
    kind: str
    source_path: str
    description: str
    status: str
    error: str | None
    scan_completed: bool
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    paused_at: datetime | None = None
    cancelled_at: datetime | None = None
    counters: CountersOut


class TaskPage(BaseModel):
    limit: int
    offset: int
    items: list[TaskOut]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    name: str = Field(default="", max_length=200)


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself: shown this once, never stored.")


class RetrieveStudyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    study_uid: str
    status: Literal["pending", "skipped", "retrieving", "done"] = Field(
        description="skipped: the index already holds as many instances as the PACS"
    )
    expected: int | None = Field(description="Instances the PACS's C-FIND announced")
    completed: int
    failed: int
    warning: int
    remaining: int | None


class RetrieveProgressOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    studies_matched: int
    studies_skipped: int
    studies_retrieved: int
    instances_expected: int | None
    instances_completed: int = Field(description="Sub-operations the PACS reports completed")
    instances_failed: int
    instances_warning: int
    instances_remaining: int | None
    instances_indexed: int = Field(description="Instances of these studies in the index now")


class RetrieveStateOut(BaseModel):
    pacs: str
    method: Literal["move", "get"] | None
    request: dict[str, Any]
    attempts: int = Field(description="Failed attempts (PACS away) so far")
    next_attempt_at: datetime
    last_error: str | None
    progress: RetrieveProgressOut
    studies: list[RetrieveStudyOut] = Field(description="The first 100 studies")


class RetrieveOut(TaskOut):
    retrieve: RetrieveStateOut


class SessionCreate(BaseModel):
    """Sign-in body: the API key a person was given."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    key: str = Field(min_length=1, max_length=256, description="An API key (`dfk_...`)")


class SessionOut(BaseModel):
    """Who a signed-in browser is, and until when."""

    name: str
    role: Role
    key_prefix: str
    expires_at: datetime | None = Field(
        description="When the browser session ends; null when the caller used a bearer key"
    )
