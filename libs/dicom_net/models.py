"""Typed queries and results of the DICOM client."""

from __future__ import annotations

import enum
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydicom.dataset import Dataset

DATE = re.compile(r"^(\d{8})?(-(\d{8})?)?$")


class Level(enum.StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class Root(enum.StrEnum):
    PATIENT = "patient"
    STUDY = "study"


class Peer(BaseModel):
    """A remote application entity."""

    model_config = ConfigDict(frozen=True)

    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)


class Query(BaseModel):
    """A C-FIND/C-GET/C-MOVE identifier; empty fields are universal matches (not sent as
    keys at levels where they do not belong). `study_date` is `YYYYMMDD` or a range
    `YYYYMMDD-YYYYMMDD` (either end open); names may use `*` and `?` wildcards."""

    model_config = ConfigDict(frozen=True)

    level: Level = Level.STUDY
    root: Root = Root.STUDY
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    accession_number: str = ""
    modality: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_instance_uid: str = ""

    @field_validator("study_date")
    @classmethod
    def _date(cls, value: str) -> str:
        if not DATE.match(value):
            raise ValueError("study_date is YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
        return value

    def identifier(self) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = self.level.value
        ds.PatientID = self.patient_id
        ds.PatientName = self.patient_name
        if self.level != Level.PATIENT:
            ds.StudyInstanceUID = self.study_uid
            ds.StudyDate = self.study_date
            ds.StudyTime = ""
            ds.AccessionNumber = self.accession_number
            ds.StudyDescription = ""
        if self.level == Level.STUDY:
            ds.ModalitiesInStudy = self.modality
            ds.NumberOfStudyRelatedInstances = ""
            ds.NumberOfStudyRelatedSeries = ""
        if self.level in (Level.SERIES, Level.IMAGE):
            ds.SeriesInstanceUID = self.series_uid
            ds.Modality = self.modality if self.level == Level.SERIES else ""
            ds.SeriesNumber = ""
        if self.level == Level.SERIES:
            ds.NumberOfSeriesRelatedInstances = ""
        if self.level == Level.IMAGE:
            ds.SOPInstanceUID = self.sop_instance_uid
            ds.SOPClassUID = ""
            ds.InstanceNumber = ""
        return ds

    def retrieve_identifier(self) -> Dataset:
        """C-GET/C-MOVE: the level and the unique keys only (PS3.4 C.4.2.2.1)."""
        ds = Dataset()
        ds.QueryRetrieveLevel = self.level.value
        keys = [
            ("PatientID", self.patient_id),
            ("StudyInstanceUID", self.study_uid),
            ("SeriesInstanceUID", self.series_uid),
            ("SOPInstanceUID", self.sop_instance_uid),
        ]
        for keyword, value in keys:
            if value:
                setattr(ds, keyword, value)
        return ds


class Match(BaseModel):
    """One C-FIND answer; fields the peer did not return stay empty."""

    model_config = ConfigDict(frozen=True)

    level: Level
    patient_id: str = ""
    patient_name: str = ""
    study_uid: str = ""
    study_date: str = ""
    accession_number: str = ""
    study_description: str = ""
    modalities: list[str] = Field(default_factory=list)
    series_uid: str = ""
    modality: str = ""
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    number_of_instances: int | None = None
    number_of_series: int | None = None

    @classmethod
    def from_dataset(cls, level: Level, ds: Dataset) -> Match:
        def text(keyword: str) -> str:
            value: Any = ds.get(keyword, "")
            return "" if value is None else str(value)

        def number(keyword: str) -> int | None:
            value = text(keyword)
            return int(value) if value.strip().isdigit() else None

        raw = ds.get("ModalitiesInStudy")
        if raw in (None, ""):
            modalities: list[str] = []
        else:
            modalities = [str(raw)] if isinstance(raw, str) else [str(m) for m in raw]
        return cls(
            level=level,
            patient_id=text("PatientID"),
            patient_name=text("PatientName"),
            study_uid=text("StudyInstanceUID"),
            study_date=text("StudyDate"),
            accession_number=text("AccessionNumber"),
            study_description=text("StudyDescription"),
            modalities=modalities,
            series_uid=text("SeriesInstanceUID"),
            modality=text("Modality"),
            sop_instance_uid=text("SOPInstanceUID"),
            sop_class_uid=text("SOPClassUID"),
            number_of_instances=number("NumberOfStudyRelatedInstances")
            or number("NumberOfSeriesRelatedInstances"),
            number_of_series=number("NumberOfStudyRelatedSeries"),
        )


class Progress(BaseModel):
    """Sub-operation counters of a C-GET/C-MOVE so far."""

    completed: int = 0
    remaining: int | None = None
    failed: int = 0
    warning: int = 0


class RetrieveResult(BaseModel):
    status: int = Field(description="Final DIMSE status (0x0000 success, 0xB000 partial).")
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_sop_instance_uids: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list, description="C-GET: files written.")
