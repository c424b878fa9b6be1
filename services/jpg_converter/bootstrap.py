from __future__ import annotations

from functools import partial

from libs.events import InstanceStored
from libs.imaging.isolated import IsolatedRenderer
from libs.imaging.jobs import RenderRequest
from libs.kafka.consumer import Route
from libs.runtime import Runtime
from libs.storage import open_store
from services.jpg_converter.config import JpgConverterSettings
from services.jpg_converter.handlers import handle_stored


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, JpgConverterSettings)
    storage = open_store(settings.storage_url)
    renderer = IsolatedRenderer(
        settings.workers, settings.memory_limit_mb, settings.render_timeout_seconds
    )
    rt.resources.callback(renderer.close)
    await renderer.warm_up()
    request = RenderRequest(thumbnail_size=settings.thumbnail_size, quality=settings.jpeg_quality)
    handler = partial(handle_stored, storage=storage, renderer=renderer, request=request)
    await rt.consumer({InstanceStored.TOPIC: Route(InstanceStored, handler)})
