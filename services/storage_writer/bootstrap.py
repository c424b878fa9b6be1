from __future__ import annotations

from functools import partial
from urllib.parse import urlsplit

from libs.contracts.events import InstanceUnique
from libs.kafka.consumer import BatchRoute
from libs.runtime.metrics import StorageMetrics
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
    if isinstance(store, LocalStore):  # a writer killed mid-write leaves its temp file
        sweep = partial(sweep_partial, store, settings.partial_max_age_seconds)
        rt.every("partial-sweep", settings.partial_sweep_seconds, sweep)
    handler = partial(handle_unique_batch, storage=storage)
    await rt.consumer({InstanceUnique.TOPIC: BatchRoute(InstanceUnique, handler)})
