from __future__ import annotations

from functools import partial

from prometheus_client import Counter

from libs.contracts.events import Event, InstancePreviewed, InstanceStored
from libs.imaging.isolated import IsolatedRenderer
from libs.imaging.jobs import RenderRequest
from libs.kafka.consumer import Route
from libs.runtime.service import Runtime
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
    outcomes = Counter(
        "dicomflow_jpg_converter_previews_total",
        "Stored instances by preview outcome (rendered, unrenderable, skipped).",
        ["status"],
        registry=rt.registry,
    )
    request = RenderRequest(thumbnail_size=settings.thumbnail_size, quality=settings.jpeg_quality)
    convert = partial(handle_stored, storage=storage, renderer=renderer, request=request)

    async def handler(event: InstanceStored) -> list[Event]:
        out = await convert(event)
        for e in out:
            if isinstance(e, InstancePreviewed):
                outcomes.labels(e.status).inc()
        return out

    await rt.consumer({InstanceStored.TOPIC: Route(InstanceStored, handler)})
