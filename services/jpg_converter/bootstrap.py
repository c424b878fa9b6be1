from __future__ import annotations

from functools import partial
from pathlib import Path

from libs.dicom.isolation import IsolatedExecutor
from libs.events import InstanceStored
from libs.imaging.jobs import RenderRequest, RenderResult, render_file
from libs.kafka.consumer import Route
from libs.runtime import Runtime
from libs.storage import open_store
from services.jpg_converter.config import JpgConverterSettings
from services.jpg_converter.handlers import handle_stored


class IsolatedRenderer:
    """Decoding runs in limited child processes: a hostile file costs a worker, not us."""

    def __init__(self, executor: IsolatedExecutor) -> None:
        self.executor = executor

    async def render(self, path: Path, request: RenderRequest) -> RenderResult:
        return await self.executor.run(render_file, str(path), request)


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, JpgConverterSettings)
    storage = open_store(settings.storage_url)
    executor = IsolatedExecutor(
        workers=settings.workers,
        memory_limit_mb=settings.memory_limit_mb,
        timeout_s=settings.render_timeout_seconds,
    )
    rt.resources.callback(executor.close)
    await executor.warm_up()
    request = RenderRequest(thumbnail_size=settings.thumbnail_size, quality=settings.jpeg_quality)
    handler = partial(
        handle_stored, storage=storage, renderer=IsolatedRenderer(executor), request=request
    )
    await rt.consumer({InstanceStored.TOPIC: Route(InstanceStored, handler)})
