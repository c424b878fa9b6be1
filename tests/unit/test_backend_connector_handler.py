"""The backend connector's handler with in-memory ports: which requests a study causes."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.contracts.errors import PermanentError
from libs.contracts.events import PatientAttrs, StudyMetadata
from libs.db.connector import PendingImage
from services.backend_connector.handlers import Content, handle_metadata


def study(*, stable: bool = True, patient_id: str = "P1") -> StudyMetadata:
    return StudyMetadata(
        correlation_id="corr",
        source="indexer",
        study_uid="1.2.3",
        revision=2,
        stable=stable,
        patient=PatientAttrs(patient_id=patient_id, patient_name="Doe^Jane", sex="F"),
        series_count=1,
        instance_count=3,
        size_bytes=10,
        storage_prefix="studies/1.2.3/",
    )


class Records:
    def __init__(self, images: list[str]) -> None:
        self.patients: dict[str, str] = {}
        self.images = [PendingImage(uid, "1.2.3.1") for uid in images]
        self.done_: dict[str, str] = {}

    async def patient(self, patient_id: str) -> str | None:
        return self.patients.get(patient_id)

    async def remember_patient(self, patient_id: str, backend_id: str) -> None:
        self.patients.setdefault(patient_id, backend_id)

    async def pending(self, study_uid: str) -> list[PendingImage]:
        return [i for i in self.images if i.sop_instance_uid not in self.done_]

    async def done(
        self, image: PendingImage, study_uid: str, outcome: str, reason: str | None = None
    ) -> None:
        self.done_[image.sop_instance_uid] = outcome


class Backend:
    def __init__(self, *, has: dict[str, str] | None = None, race: bool = False) -> None:
        self.has = dict(has or {})
        self.race = race  # another client creates the patient just before us: 409
        self.calls: list[str] = []

    async def find_patient(self, patient_id: str) -> str | None:
        self.calls.append(f"find {patient_id}")
        return self.has.get(patient_id)

    async def create_patient(self, patient: PatientAttrs, correlation_id: str) -> str | None:
        self.calls.append(f"create {patient.patient_id}")
        self.has[patient.patient_id] = "B-1"
        return None if self.race else "B-1"

    async def upload(
        self, backend_id: str, study_uid: str, sop: str, body: bytes | Path, media: str, c: str
    ) -> None:
        self.calls.append(f"upload {sop} to {backend_id} as {media}")


class Images:
    async def content(self, study_uid: str, image: PendingImage) -> Content:
        if image.sop_instance_uid == "1.2.3.1.9":
            return "no preview: structured report"
        return b"\xff\xd8jpeg", "image/jpeg"


async def run(event: StudyMetadata, records: Records, backend: Backend) -> None:
    assert await handle_metadata(event, records=records, backend=backend, images=Images()) == []


async def test_a_new_patient_is_created_then_the_images_uploaded_once() -> None:
    records, backend = Records(["1.2.3.1.1", "1.2.3.1.9", "1.2.3.1.2"]), Backend()
    await run(study(), records, backend)
    assert backend.calls == [
        "find P1",
        "create P1",
        "upload 1.2.3.1.1 to B-1 as image/jpeg",
        "upload 1.2.3.1.2 to B-1 as image/jpeg",
    ]
    assert records.done_ == {
        "1.2.3.1.1": "uploaded",
        "1.2.3.1.9": "skipped",
        "1.2.3.1.2": "uploaded",
    }
    backend.calls.clear()
    await run(study(), records, backend)  # redelivered, or the next stable revision
    assert backend.calls == []


async def test_a_patient_the_backend_has_is_found_not_created() -> None:
    records, backend = Records(["1.2.3.1.1"]), Backend(has={"P1": "B-7"})
    await run(study(), records, backend)
    assert backend.calls == ["find P1", "upload 1.2.3.1.1 to B-7 as image/jpeg"]
    assert records.patients == {"P1": "B-7"}


async def test_a_create_answered_409_looks_the_patient_up_again() -> None:
    records, backend = Records([]), Backend(race=True)
    await run(study(), records, backend)
    assert backend.calls == ["find P1", "create P1", "find P1"]
    assert records.patients == {"P1": "B-1"}


async def test_a_study_not_yet_stable_waits_and_one_without_patient_id_is_refused() -> None:
    records, backend = Records(["1.2.3.1.1"]), Backend()
    await run(study(stable=False), records, backend)
    assert backend.calls == []
    with pytest.raises(PermanentError, match="no PatientID"):
        await run(study(patient_id=" "), records, backend)
