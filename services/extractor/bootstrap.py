from __future__ import annotations

import asyncio
from functools import partial

from libs.contracts.events import FileDiscovered
from libs.db import task_control
from libs.db.ledger import settled_files
from libs.dicom.extract import extract_many
from libs.kafka.consumer import BatchRoute
from libs.kafka.redelivered import skip_settled
from libs.runtime.metrics import redelivered_counter
from libs.runtime.sandbox import IsolatedExecutor
from libs.runtime.service import Runtime
from libs.storage.stamp import own_roots
from services.extractor.config import ExtractorSettings
from services.extractor.handlers import Parsed, handle_discovered_batch

# Files per call to a parser process: few enough that a chunk stays far inside the time
# limit, enough that the round trip is shared.
CHUNK = 25


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, ExtractorSettings)
    executor = IsolatedExecutor(
        workers=settings.workers,
        memory_limit_mb=settings.memory_limit_mb,
        timeout_s=settings.parse_timeout_seconds,
        preload=(extract_many.__module__,),
    )
    rt.resources.callback(executor.close)
    await executor.warm_up()
    roots = settings.source_roots()
    own = own_roots(settings.own_staging())

    async def parse_many(paths: list[str]) -> list[Parsed]:
        """The batch spread over the parser processes, one call per chunk. A chunk whose
        process crashed or timed out fails the batch: the bus then parses the files one by
        one, and only the guilty one is dead-lettered."""
        size = min(CHUNK, max(1, -(-len(paths) // settings.workers)))
        chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
        results = await asyncio.gather(
            *(
                executor.run(extract_many, c, settings.zero_hostile_preamble, roots, own)
                for c in chunks
            ),
            return_exceptions=True,
        )
        out: list[Parsed] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            out += result
        return out

    pool = await rt.pool()

    async def gate(files: list[tuple[int, str]]) -> frozenset[int]:
        async with pool.acquire() as conn:
            gated = await task_control.gate(conn, files)
        return gated.held | gated.cancelled

    handler = skip_settled(
        partial(handle_discovered_batch, parse_many=parse_many, gate=gate),
        partial(settled_files, pool),
        redelivered_counter(rt.name, rt.registry),
    )
    await rt.consumer(
        {FileDiscovered.TOPIC: BatchRoute(FileDiscovered, handler)},
        overlap=settings.overlap_batches,
    )
