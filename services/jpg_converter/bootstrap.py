from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from functools import partial

from prometheus_client import Counter

from libs.contracts.events import InstancePreviewed, InstanceStored
from libs.imaging.isolated import IsolatedRenderer
from libs.imaging.jobs import RenderRequest
from libs.kafka.consumer import BatchRoute, Outcome
from libs.runtime.logging import get_logger
from libs.runtime.service import Runtime
from libs.storage import open_store
from services.jpg_converter.config import JpgConverterSettings
from services.jpg_converter.handlers import (
    Representatives,
    handle_stored,
    handle_stored_batch,
)

log = get_logger(__name__)


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, JpgConverterSettings)
    # Before the render processes start: they inherit it.
    os.setpriority(os.PRIO_PROCESS, 0, max(settings.nice, os.getpriority(os.PRIO_PROCESS, 0)))
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
    representatives = Representatives() if settings.eager == "series" else None

    async def batch(events: Sequence[InstanceStored]) -> list[Outcome]:
        out = await handle_stored_batch(events, convert=convert, representatives=representatives)
        tally: collections.Counter[str] = collections.Counter()  # one metric update per status
        for result in out:
            for e in result if not isinstance(result, Exception) else ():
                if isinstance(e, InstancePreviewed):
                    tally[e.status] += 1
                    if e.status == "unrenderable":  # a failure: always logged, with its id
                        log.warning(
                            "no preview",
                            correlation_id=e.correlation_id,
                            sop_instance_uid=e.sop_instance_uid,
                            reason=e.reason,
                        )
        for status, count in tally.items():
            outcomes.labels(status).inc(count)
        return out

    await rt.consumer({InstanceStored.TOPIC: BatchRoute(InstanceStored, batch)})
