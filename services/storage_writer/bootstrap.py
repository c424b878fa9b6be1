from __future__ import annotations

from functools import partial

from libs.events import InstanceUnique
from libs.kafka.consumer import Route
from libs.runtime import Runtime
from libs.storage import open_store
from services.storage_writer.handlers import handle_unique


async def wire(rt: Runtime) -> None:
    storage = open_store(rt.settings.storage_url)
    handler = partial(handle_unique, storage=storage)
    await rt.consumer({InstanceUnique.TOPIC: Route(InstanceUnique, handler)})
