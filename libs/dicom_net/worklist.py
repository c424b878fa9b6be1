"""Typed Modality Worklist C-FIND (PS3.4 K.6): the query a modality asks and the scheduled
procedure steps it gets back."""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydicom.dataset import Dataset


class WorklistQuery(BaseModel):
    """Matching keys; an empty one matches everything. Names may use `*` and `?`. The date
    range is on Scheduled Procedure Step Start Date, both ends inclusive, either open."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    scheduled_station_ae: str = Field(default="", max_length=16)
    date_from: date | None = None
    date_to: date | None = None
    modality: str = Field(default="", max_length=16)
    patient_id: str = Field(default="", max_length=64)
    patient_name: str = Field(default="", max_length=64)

    @model_validator(mode="after")
    def _range(self) -> WorklistQuery:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError("date_from must not be after date_to")
        return self

    def scheduled_dates(self) -> str:
        start, end = self.date_from, self.date_to
        if start is None and end is None:
            return ""
        if start is not None and end is not None:
            return f"{start:%Y%m%d}" if start == end else f"{start:%Y%m%d}-{end:%Y%m%d}"
        return f"{start:%Y%m%d}-" if start is not None else f"-{end:%Y%m%d}"

    def identifier(self) -> Dataset:
        step = Dataset()
        step.ScheduledStationAETitle = self.scheduled_station_ae
        step.ScheduledProcedureStepStartDate = self.scheduled_dates()
        step.ScheduledProcedureStepStartTime = ""
        step.Modality = self.modality
        step.ScheduledPerformingPhysicianName = ""
        step.ScheduledProcedureStepDescription = ""
        step.ScheduledProcedureStepID = ""
        step.ScheduledStationName = ""
        ds = Dataset()
        ds.SpecificCharacterSet = ""
        ds.PatientName = self.patient_name
        ds.PatientID = self.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.AccessionNumber = ""
        ds.StudyInstanceUID = ""
        ds.RequestedProcedureID = ""
        ds.RequestedProcedureDescription = ""
        ds.ScheduledProcedureStepSequence = [step]
        return ds


class WorklistItem(BaseModel):
    """One scheduled procedure step; what the peer did not return stays empty."""

    model_config = ConfigDict(frozen=True)

    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    study_uid: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    scheduled_station_ae: str = ""
    scheduled_station_name: str = ""
    scheduled_date: str = ""
    scheduled_time: str = ""
    modality: str = ""
    performing_physician: str = ""
    step_id: str = ""
    step_description: str = ""

    @classmethod
    def from_dataset(cls, ds: Dataset) -> WorklistItem:
        steps = ds.get("ScheduledProcedureStepSequence") or [Dataset()]
        step = steps[0]

        def text(source: Dataset, keyword: str) -> str:
            value: Any = source.get(keyword, "")
            return "" if value is None else str(value).strip()

        return cls(
            patient_id=text(ds, "PatientID"),
            patient_name=text(ds, "PatientName"),
            patient_birth_date=text(ds, "PatientBirthDate"),
            patient_sex=text(ds, "PatientSex"),
            accession_number=text(ds, "AccessionNumber"),
            study_uid=text(ds, "StudyInstanceUID"),
            requested_procedure_id=text(ds, "RequestedProcedureID"),
            requested_procedure_description=text(ds, "RequestedProcedureDescription"),
            scheduled_station_ae=text(step, "ScheduledStationAETitle"),
            scheduled_station_name=text(step, "ScheduledStationName"),
            scheduled_date=text(step, "ScheduledProcedureStepStartDate"),
            scheduled_time=text(step, "ScheduledProcedureStepStartTime"),
            modality=text(step, "Modality"),
            performing_physician=text(step, "ScheduledPerformingPhysicianName"),
            step_id=text(step, "ScheduledProcedureStepID"),
            step_description=text(step, "ScheduledProcedureStepDescription"),
        )
