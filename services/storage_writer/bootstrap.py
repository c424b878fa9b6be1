from __future__ import annotations

from functools import partial
from urllib.parse import urlsplit

from libs.contracts.events import InstanceUnique
from libs.db.ledger import settled_files
from libs.kafka.consumer import BatchRoute
from libs.kafka.redelivered import skip_settled
from libs.runtime.metrics import StorageMetrics, redelivered_counter
from libs.runtime.service import Runtime
from libs.storage import open_store
from libs.storage.local import LocalStore, path_from_file_url
from libs.storage.metered import MeteredStore
from services.storage_writer.config import StorageWriterSettings
from services.storage_writer.handlers import handle_unique_batch, sweep_partial


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, StorageWriterSettings)
    url = settings.storage_url
    store = open_store(url)
    storage = MeteredStore(store, StorageMetrics.create(rt.name, rt.registry))
    if urlsplit(url).scheme == "file":
        rt.watch_disk("storage", path_from_file_url(url))
    if isinstance(store, LocalStore) and settings.direct_io:
        store.enable_direct_io()
    if isinstance(store, LocalStore) and settings.own_staging():
        store.link_own(settings.own_staging())
    if isinstance(store, LocalStore):  # a writer killed mid-write leaves its temp file
        sweep = partial(sweep_partial, store, settings.partial_max_age_seconds)
        rt.every("partial-sweep", settings.partial_sweep_seconds, sweep)
    pool = await rt.pool()
    handler = skip_settled(
        partial(handle_unique_batch, storage=storage),
        partial(settled_files, pool),
        redelivered_counter(rt.name, rt.registry),
    )
    await rt.consumer(
        {InstanceUnique.TOPIC: BatchRoute(InstanceUnique, handler)},
        overlap=settings.overlap_batches,
    )
