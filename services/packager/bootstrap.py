"""Wires the real adapters: PostgreSQL (listings, API keys, audit), the object store, the
disk cache, the producer (dicom.archive.v1) and, when PACKAGER_PREBUILD is on, a consumer of
dicom.metadata.v1."""

from __future__ import annotations

from functools import partial

from prometheus_client import Counter

from libs.contracts.events import StudyMetadata
from libs.db.archives import ArchiveListing, archive_listing
from libs.kafka.consumer import Route
from libs.runtime.metrics import metric_prefix
from libs.runtime.service import Runtime
from libs.storage import open_store
from services.packager.app import create_app
from services.packager.cache import ArchiveCache
from services.packager.config import PackagerSettings
from services.packager.handlers import handle_metadata
from services.packager.packager import Encoding, Packager


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    if not isinstance(settings, PackagerSettings):
        raise TypeError("the packager needs PackagerSettings")
    store = open_store(settings.storage_url)
    cache = ArchiveCache(settings.cache_dir.resolve(), settings.cache_max_bytes)
    cache.prepare()
    pool = await rt.pool()
    producer = await rt.producer()

    async def listings(study_uid: str, series_uid: str | None) -> ArchiveListing | None:
        async with pool.acquire() as conn:
            return await archive_listing(conn, study_uid, series_uid)

    builds = Counter(
        f"{metric_prefix('packager')}_builds_total",
        "Archive builds started (concurrent requests for one revision share one build).",
        registry=rt.registry,
    )
    packager = Packager(
        store=store,
        cache=cache,
        listings=listings,
        publish=producer.publish,
        encoding=Encoding(settings.zstd_level, settings.zstd_threads),
        on_build=builds.inc,
    )
    rt.app = create_app(pool, packager, rt.registry, rt.readiness)
    if settings.prebuild:
        handler = partial(handle_metadata, packager=packager)
        await rt.consumer({StudyMetadata.TOPIC: Route(StudyMetadata, handler)})
