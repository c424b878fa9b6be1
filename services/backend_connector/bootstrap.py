"""Wire the backend connector: PostgreSQL records, the backend client, images from storage
(JPEG previews rendered in an isolated worker, or the DICOM file), the consumer."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import asyncpg

from libs.contracts.errors import PermanentError
from libs.contracts.events import StudyMetadata
from libs.db import connector
from libs.db.connector import PendingImage
from libs.http.delivery import DeliveryMetrics, ReceiverHealth
from libs.imaging.isolated import IsolatedRenderer
from libs.imaging.jobs import RenderRequest
from libs.kafka.consumer import Route
from libs.runtime.probes import ops_app
from libs.runtime.service import Runtime
from libs.storage import ObjectStore, open_store, served_key
from libs.storage.local import LocalStore
from services.backend_connector.backend import Backend
from services.backend_connector.config import ConnectorSettings
from services.backend_connector.handlers import Content, handle_metadata

PREVIEW = RenderRequest(kinds=("preview",))


class PgRecords:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def patient(self, patient_id: str) -> str | None:
        async with self.pool.acquire() as conn:
            return await connector.patient(conn, patient_id)

    async def remember_patient(self, patient_id: str, backend_id: str) -> None:
        async with self.pool.acquire() as conn:
            await connector.remember_patient(conn, patient_id, backend_id)

    async def pending(self, study_uid: str) -> list[PendingImage]:
        async with self.pool.acquire() as conn:
            return await connector.pending_images(conn, study_uid)

    async def done(
        self, image: PendingImage, study_uid: str, outcome: str, reason: str | None = None
    ) -> None:
        async with self.pool.acquire() as conn:
            await connector.image_done(conn, image.sop_instance_uid, study_uid, outcome, reason)


class StoredImages:
    """An instance's upload: the stored DICOM file, or a JPEG preview of its first frame."""

    def __init__(self, store: ObjectStore, upload: str, renderer: IsolatedRenderer | None):
        if not isinstance(store, LocalStore):
            raise ValueError("the backend connector reads file:// storage only")
        self._store = store
        self._upload = upload
        self._renderer = renderer

    async def content(self, study_uid: str, image: PendingImage) -> Content:
        path = self._store.path_for(
            served_key(study_uid, image.series_uid, image.sop_instance_uid, image.revision_key)
        )
        if not await asyncio.to_thread(path.is_file):
            return f"the stored copy {path.name} is gone"
        if self._upload == "dicom" or self._renderer is None:
            return Path(path), "application/dicom"
        try:
            result = await self._renderer.render(path, PREVIEW)
        except PermanentError as exc:  # unrenderable (SR, no pixels...), crashed, too slow
            return f"no preview: {exc}"
        previews = [i for i in result.images if i.kind == "preview"]
        if not previews:
            return "no preview rendered"
        return previews[0].jpeg, "image/jpeg"


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, ConnectorSettings)
    settings.require_url()
    pool = await rt.pool()
    renderer = None
    if settings.upload == "jpeg":
        renderer = IsolatedRenderer(1, 2048, 120.0)
        rt.resources.callback(renderer.close)
        await renderer.warm_up()
    metrics = DeliveryMetrics.create(rt.name, rt.registry)
    health = ReceiverHealth(metrics, target="backend")
    backend = Backend(settings, health=health, metrics=metrics, sleep=rt.sleep)
    rt.resources.push_async_callback(backend.close)

    async def backend_up() -> bool:
        return health.up

    rt.readiness.add("backend", backend_up)
    rt.app = ops_app(rt.name, rt.readiness, rt.registry)
    images = StoredImages(open_store(settings.storage_url), settings.upload, renderer)
    handler = partial(handle_metadata, records=PgRecords(pool), backend=backend, images=images)
    await rt.consumer({StudyMetadata.TOPIC: Route(StudyMetadata, handler)})
