"""De-identified exports (permission `imports`: ops, admin): ask for studies de-identified
per DICOM PS3.15 (Basic Application Level Confidentiality Profile and options), follow the
job, download the archive. The API's export round runs the job (`services/api/exports.py`);
every call is audited, the creation with the studies and the profile asked for."""

import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from libs.db import exports
from libs.dicom.uids import UID_MAX_LENGTH, UID_RE
from libs.http.auth import Authenticator, Caller

MAX_STUDIES = 1000
MEDIA_TYPES = {"zip": "application/zip", "tar.zst": "application/zstd"}
StudyUid = Annotated[str, StringConstraints(pattern=UID_RE.pattern, max_length=UID_MAX_LENGTH)]


class ExportProfile(BaseModel):
    """The Basic Profile always applies; these are its options (PS3.15 E.3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modified_dates: bool = Field(
        default=False,
        description="Retain Longitudinal Temporal Information with Modified Dates: every "
        "date is moved back by the same whole number of days (365 to 3,650) for all studies "
        "of a patient (secret per installation); without it, dates are removed or emptied",
    )
    clean_descriptors: bool = Field(
        default=False,
        description="Clean Descriptors: study, series and other descriptions are kept with "
        "every word of the patient's identity (names, IDs, accession number) replaced by *; "
        "without it they are removed",
    )


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_uids: list[StudyUid] = Field(min_length=1, max_length=MAX_STUDIES)
    profile: ExportProfile = ExportProfile()
    include_burned_in: bool = Field(
        default=False,
        description="Also export instances that may show identifying text in their pixels "
        "(BurnedInAnnotation YES, or US, secondary capture, document... without "
        "BurnedInAnnotation NO); by default they are left out and listed",
    )
    format: Literal["zip", "tar.zst"] = Field(
        default="zip", description="`zip` (stored) or `tar.zst` (TAR compressed with zstd)"
    )


class ExportAccepted(BaseModel):
    export_id: str
    status: Literal["queued"] = "queued"


class ExportProgress(BaseModel):
    total: int = Field(description="Instances the studies hold")
    processed: int
    exported: int
    excluded: int = Field(description="Left out: burned-in annotation risk")
    failed: int = Field(description="Missing from storage or unreadable")
    percent: float


class ExportOut(BaseModel):
    export_id: str
    status: Literal["queued", "running", "completed", "failed", "expired"]
    study_uids: list[str]
    profile: dict[str, Any]
    progress: ExportProgress
    left_out: list[dict[str, Any]] = Field(
        description="Excluded and failed instances (up to 1,000), with the reason, their "
        "de-identified UIDs and (`original`) the stored ones"
    )
    archive_url: str | None = Field(description="Where to download the archive once completed")
    archive_size: int | None
    archive_sha256: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def _out(job: exports.ExportJob) -> ExportOut:
    done = job.processed if job.status != "completed" else job.total
    return ExportOut(
        export_id=job.id,
        status=job.status,
        study_uids=job.study_uids,
        profile=job.profile,
        progress=ExportProgress(
            total=job.total,
            processed=job.processed,
            exported=job.exported,
            excluded=job.excluded,
            failed=job.failed,
            percent=round(100.0 * done / job.total, 1) if job.total else 0.0,
        ),
        left_out=job.outcomes,
        archive_url=f"/v1/exports/{job.id}/archive" if job.status == "completed" else None,
        archive_size=job.archive_size,
        archive_sha256=job.archive_sha256,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def _unknown_studies(missing: list[str]) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "unknown_study",
                "loc": ("body", "study_uids"),
                "msg": f"not in the index: {', '.join(missing[:10])}",
                "input": missing,
            }
        ]
    )


def exports_router(pool: asyncpg.Pool, auth: Authenticator, directory: Path) -> APIRouter:
    router = APIRouter(prefix="/v1/exports", tags=["exports"])
    creator = Depends(auth.require("imports", "export.create"))
    reader = Depends(auth.require("imports", "export.read"))
    downloader = Depends(auth.require("imports", "export.download"))

    async def _job(export_id: uuid.UUID, caller: Caller) -> exports.ExportJob:
        async with pool.acquire() as conn:
            job = await exports.get(conn, str(export_id))
        caller.saw(1 if job else 0)
        if job is None:
            raise HTTPException(status_code=404, detail="export not found")
        return job

    @router.post("", status_code=202, response_model=ExportAccepted)
    async def create_export(
        body: ExportRequest, caller: Annotated[Caller, creator]
    ) -> ExportAccepted:
        """De-identify studies into one archive, asynchronously: follow the job at
        `GET /v1/exports/{export_id}`, download it from its `archive_url` when completed."""
        uids = list(dict.fromkeys(body.study_uids))
        profile = {
            "options": body.profile.model_dump(),
            "include_burned_in": body.include_burned_in,
            "format": body.format,
        }
        caller.note(study_uids=uids, profile=profile)
        async with pool.acquire() as conn:
            known = await exports.known_studies(conn, uids)
            if missing := [u for u in uids if u not in known]:
                raise _unknown_studies(missing)
            job = await exports.create(conn, uids, profile, caller.created_by)
        caller.note(export_id=job.id)
        caller.saw(len(uids))
        return ExportAccepted(export_id=job.id)

    @router.get("/{export_id}", response_model=ExportOut)
    async def read_export(export_id: uuid.UUID, caller: Annotated[Caller, reader]) -> ExportOut:
        """The job: its state, progress, the instances left out and why, the archive."""
        return _out(await _job(export_id, caller))

    @router.get(
        "/{export_id}/archive",
        response_class=FileResponse,
        responses={
            200: {"content": {t: {"schema": {"type": "string", "format": "binary"}}
                              for t in MEDIA_TYPES.values()}},
            404: {"description": "No such export"},
            409: {"description": "The export is not completed (yet, or it failed)"},
            410: {"description": "The archive was removed (past its retention)"},
        },
    )  # fmt: skip
    async def download_export(
        export_id: uuid.UUID, caller: Annotated[Caller, downloader]
    ) -> FileResponse:
        """The de-identified archive (resumable with `Range`): the instances under
        `<pseudonym>/<study>/<series>/<instance>.dcm` and `manifest.json` (every file with
        its SHA-256, the profile, what was left out and why)."""
        job = await _job(export_id, caller)
        if job.status == "expired":
            raise HTTPException(status_code=410, detail="the archive was removed (retention)")
        if job.status != "completed" or not job.archive_name:
            raise HTTPException(status_code=409, detail=f"the export is {job.status}")
        path = directory / job.archive_name
        if not path.is_file():
            raise HTTPException(status_code=410, detail="the archive is no longer on this server")
        fmt = str(job.profile.get("format", "zip"))
        return FileResponse(
            path,
            media_type=MEDIA_TYPES.get(fmt, "application/octet-stream"),
            filename=f"deid-{job.id}.{fmt}",
        )

    return router
