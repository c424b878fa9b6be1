from __future__ import annotations

from functools import partial

from libs.contracts.events import DicomHeader, FileDiscovered, Hashes
from libs.dicom.extract import extract_file
from libs.kafka.consumer import Route
from libs.runtime.sandbox import IsolatedExecutor
from libs.runtime.service import Runtime
from services.extractor.config import ExtractorSettings
from services.extractor.handlers import handle_discovered


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, ExtractorSettings)
    executor = IsolatedExecutor(
        workers=settings.workers,
        memory_limit_mb=settings.memory_limit_mb,
        timeout_s=settings.parse_timeout_seconds,
        preload=(extract_file.__module__,),
    )
    rt.resources.callback(executor.close)
    await executor.warm_up()

    async def parse(path: str) -> tuple[DicomHeader, Hashes]:
        header, hashes = await executor.run(extract_file, path, settings.zero_hostile_preamble)
        return header, hashes

    handler = partial(handle_discovered, parse=parse)
    await rt.consumer({FileDiscovered.TOPIC: Route(FileDiscovered, handler)})
