"""What `GET /v1/imports/{task_id}/stats` returns."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, Field


class PatientStatsOut(BaseModel):
    patient_id: str
    patient_name: str
    birth_date: date | None
    sex: str
    new_to_index: bool = Field(description="This import brought the patient into the index.")
    studies: int
    new_instances: int
    duplicates: int
    conflicts: int
    size_bytes: int = Field(description="Bytes of the new instances.")


class ModalityStatsOut(BaseModel):
    modality: str
    new_instances: int
    duplicates: int
    conflicts: int
    size_bytes: int


class FailureGroupOut(BaseModel):
    stage: str | None
    reason: str | None
    files: int
    example: str = Field(description="One of the files that failed for this reason.")


class RatesOut(BaseModel):
    elapsed_seconds: float = Field(description="Since the scan started, until it ended.")
    files_done: int = Field(description="Files that reached an outcome.")
    bytes_done: int
    files_per_second: float = Field(description="Over the whole import.")
    bytes_per_second: float
    recent_files_per_second: float = Field(description="Over the last minute.")
    eta_seconds: float | None = Field(description="Pending files at the recent rate.")


class TaskStatsOut(BaseModel):
    task_id: str
    status: str
    patients_total: int
    patients: list[PatientStatsOut] = Field(description="Most instances first, up to `limit`.")
    modalities: list[ModalityStatsOut]
    rates: RatesOut
    failure_groups: list[FailureGroupOut] = Field(description="Failed files by stage and reason.")
