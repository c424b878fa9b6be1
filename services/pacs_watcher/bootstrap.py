from __future__ import annotations

from functools import partial

from prometheus_client import Counter

from libs.db import retrieves as retrieves_db
from libs.runtime.logging import get_logger
from libs.runtime.service import Runtime
from libs.staging.cleanup import Retention, StagingCleanup
from services.pacs_watcher.config import WatcherSettings
from services.pacs_watcher.poller import P, PacsWatch
from services.pacs_watcher.retrieves import OnDemand, owner_id

log = get_logger(__name__)


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, WatcherSettings)
    if not settings.pacs:
        raise ValueError("WATCHER_PACS is empty: nothing to watch")
    pool = await rt.pool()
    producer = await rt.producer()
    metrics = {
        "polls": Counter(
            f"{P}_polls_total",
            "Polls by PACS and outcome.",
            ["pacs", "outcome"],
            registry=rt.registry,
        ),
        "instances": Counter(
            f"{P}_retrieved_instances_total",
            "Instances retrieved, by PACS.",
            ["pacs"],
            registry=rt.registry,
        ),
    }
    cleanup = StagingCleanup(  # what C-GET staged, once indexed (C-MOVE goes by the receiver)
        pool,
        owner=f"pacs-watcher:{settings.staging_dir.absolute()}",
        root=settings.staging_dir,
        source_like="pacs:%",
        retention=Retention.of(settings),
        removed=Counter(
            f"{P}_staging_removed_total",
            "C-GET files removed from staging: done (indexed/duplicate), kept "
            "(failed/conflict, after their longer retention).",
            ["kind"],
            registry=rt.registry,
        ),
    )
    rt.add_worker("staging-cleanup", partial(cleanup.run, rt, settings.cleanup_interval_seconds))
    async with pool.acquire() as conn:  # the names POST /v1/retrieve accepts
        await retrieves_db.register_peers(
            conn, [(p.name, p.ae_title, p.retrieve) for p in settings.pacs]
        )
    owner = owner_id()
    for pacs in settings.pacs:
        watch = PacsWatch(pacs, settings, pool, producer, metrics)
        rt.add_worker(f"pacs:{pacs.name}", partial(watch.run, rt))
        rt.add_worker(f"retrieve:{pacs.name}", partial(OnDemand(watch, pool, owner).run, rt))
