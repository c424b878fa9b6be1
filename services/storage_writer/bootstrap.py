from __future__ import annotations

from functools import partial
from urllib.parse import urlsplit

from libs.contracts.events import InstanceUnique
from libs.kafka.consumer import BatchRoute
from libs.runtime.metrics import StorageMetrics
from libs.runtime.service import Runtime
from libs.storage import open_store
from libs.storage.local import path_from_file_url
from libs.storage.metered import MeteredStore
from services.storage_writer.handlers import handle_unique_batch


async def wire(rt: Runtime) -> None:
    url = rt.settings.storage_url
    storage = MeteredStore(open_store(url), StorageMetrics.create(rt.name, rt.registry))
    if urlsplit(url).scheme == "file":
        rt.watch_disk("storage", path_from_file_url(url))
    handler = partial(handle_unique_batch, storage=storage)
    await rt.consumer({InstanceUnique.TOPIC: BatchRoute(InstanceUnique, handler)})
