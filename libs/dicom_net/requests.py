"""What may be asked of an upstream PACS on demand (`POST /v1/retrieve`): one study by its
UID, or the studies a C-FIND query matches. The API validates it, the task stores it as JSON,
and the PACS watcher turns it back into a `Query`; one model for all three."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from libs.dicom.uids import is_valid_uid
from libs.dicom_net.models import Level, Query

# No wildcards (`*`, `?`) and no value multiplicity (`\`): a retrieve names what it wants,
# a `*` would ask the PACS for everything it holds.
KEY = r"^[^*?\\\x00-\x1f]+$"


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _uid(value: Any) -> Any:
    if isinstance(value, str) and not is_valid_uid(value):
        raise ValueError("study_uid is not a DICOM UID (digits and dots, at most 64 characters)")
    return value


class RetrieveQuery(BaseModel):
    """C-FIND keys (STUDY level, combined with AND); at least one must be given."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    patient_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=KEY)
    accession_number: str | None = Field(default=None, min_length=1, max_length=16, pattern=KEY)
    study_date_from: date | None = Field(default=None, description="Inclusive")
    study_date_to: date | None = Field(default=None, description="Inclusive")
    modality: Annotated[str | None, BeforeValidator(_upper)] = Field(
        default=None, pattern=r"^[A-Z0-9_]{1,16}$"
    )

    @model_validator(mode="after")
    def _some_key(self) -> RetrieveQuery:
        if not self.model_dump(exclude_none=True):
            raise ValueError(
                "query needs at least one of patient_id, accession_number, "
                "study_date_from, study_date_to, modality"
            )
        start, end = self.study_date_from, self.study_date_to
        if start and end and start > end:
            raise ValueError("study_date_from must not be after study_date_to")
        return self

    def study_date(self) -> str:
        """The DICOM range `YYYYMMDD-YYYYMMDD` (either end open), or "" for any date."""
        start, end = self.study_date_from, self.study_date_to
        if start is None and end is None:
            return ""
        return (
            f"{start:%Y%m%d}-{end:%Y%m%d}"
            if start and end
            else (f"{start:%Y%m%d}-" if start else f"-{end:%Y%m%d}")
        )


class RetrieveRequest(BaseModel):
    """`{"pacs": name, "study_uid": uid}` or `{"pacs": name, "query": {...}}`, exactly one."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    pacs: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    study_uid: Annotated[str | None, BeforeValidator(_uid)] = None
    query: RetrieveQuery | None = None
    description: str = Field(default="", max_length=1000)

    @model_validator(mode="after")
    def _exactly_one(self) -> RetrieveRequest:
        if (self.study_uid is None) == (self.query is None):
            raise ValueError("give exactly one of study_uid or query")
        return self

    def find_query(self) -> Query:
        """The STUDY-level C-FIND that lists the studies to retrieve (for a single UID too:
        it tells whether the PACS has the study and how many instances it holds)."""
        if self.study_uid is not None:
            return Query(level=Level.STUDY, study_uid=self.study_uid)
        q = self.query
        assert q is not None
        return Query(
            level=Level.STUDY,
            patient_id=q.patient_id or "",
            accession_number=q.accession_number or "",
            study_date=q.study_date(),
            modality=q.modality or "",
        )
