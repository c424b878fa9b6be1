"""For each stable study of `dicom.metadata.v1`: find the patient in the backend by PatientID
(create it when missing), then upload the study's images the backend does not have yet.

What the backend has is recorded as it happens (`libs/db/connector.py`): a redelivered event,
a restart or a later revision of the study sends only what is missing, and creates no
patient twice. A study not yet stable is left for its stable revision (it is complete then).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from libs.contracts.errors import PermanentError
from libs.contracts.events import Event, PatientAttrs, StudyMetadata
from libs.db.connector import PendingImage
from libs.runtime.logging import get_logger

log = get_logger(__name__)
Content = tuple[bytes | Path, str] | str  # (body, media type), or why the image is skipped


class RecordsPort(Protocol):
    async def patient(self, patient_id: str) -> str | None: ...
    async def remember_patient(self, patient_id: str, backend_id: str) -> None: ...
    async def pending(self, study_uid: str) -> list[PendingImage]: ...
    async def done(
        self, image: PendingImage, study_uid: str, outcome: str, reason: str | None = None
    ) -> None: ...


class BackendPort(Protocol):
    async def find_patient(self, patient_id: str) -> str | None: ...
    async def create_patient(self, patient: PatientAttrs, correlation_id: str) -> str | None: ...
    async def upload(
        self,
        backend_id: str,
        study_uid: str,
        sop_instance_uid: str,
        body: bytes | Path,
        media_type: str,
        correlation_id: str,
    ) -> None: ...


class ImagesPort(Protocol):
    async def content(self, study_uid: str, image: PendingImage) -> Content: ...


async def backend_patient(event: StudyMetadata, records: RecordsPort, backend: BackendPort) -> str:
    pid = event.patient.patient_id
    known = await records.patient(pid)
    if known is not None:
        return known
    found = await backend.find_patient(pid)
    if found is None:
        found = await backend.create_patient(event.patient, event.correlation_id)
        if found is None:  # 409: created meanwhile (a retry, another study of the patient)
            found = await backend.find_patient(pid)
        if found is None:
            raise PermanentError(f"the backend says patient {pid!r} exists but does not list it")
        log.info("patient created in the backend", backend_id=found)
    await records.remember_patient(pid, found)
    return found


async def handle_metadata(
    event: StudyMetadata, *, records: RecordsPort, backend: BackendPort, images: ImagesPort
) -> list[Event]:
    if not event.stable:
        return []
    if not event.patient.patient_id.strip():
        raise PermanentError("the study has no PatientID: the backend finds patients by it")
    backend_id = await backend_patient(event, records, backend)
    uploaded = skipped = 0
    for image in await records.pending(event.study_uid):
        content = await images.content(event.study_uid, image)
        if isinstance(content, str):
            await records.done(image, event.study_uid, "skipped", content)
            skipped += 1
            continue
        body, media_type = content
        await backend.upload(
            backend_id,
            event.study_uid,
            image.sop_instance_uid,
            body,
            media_type,
            event.correlation_id,
        )
        await records.done(image, event.study_uid, "uploaded")
        uploaded += 1
    log.info("study sent to the backend", uploaded=uploaded, skipped=skipped)
    return []
