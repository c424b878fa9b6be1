from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial

from libs.db import ledger
from libs.db.commitment import State, commitment_states
from libs.db.ledger import LedgerRow, NewFile
from libs.db.pool import PinnedConnection
from libs.runtime.logging import get_logger
from libs.runtime.service import Runtime
from libs.staging.cleanup import Retention, StagingCleanup
from services.dicom_receiver.commitment import CommitmentSCP, parse_peers
from services.dicom_receiver.committer import Committer
from services.dicom_receiver.config import ReceiverSettings, is_loopback
from services.dicom_receiver.handlers import free_mb, make_durable
from services.dicom_receiver.processes import OtherProcesses, die_with_parent
from services.dicom_receiver.scp import ReceiverMetrics, StoreSCP

log = get_logger(__name__)


async def wire(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, ReceiverSettings)
    first = settings.process_index == 0  # the one started by `dicomflow up` (ADR 0026)
    if not first:
        die_with_parent()
    if not settings.allowed_callers and not is_loopback(settings.host):
        # Only with RECEIVER_ALLOW_ANY_CALLER=true (the settings refuse it otherwise).
        log.warning("any calling AE may store (RECEIVER_ALLOW_ANY_CALLER)", host=settings.host)
    pool = await rt.pool()
    producer = await rt.producer()

    ledger_conn = PinnedConnection(pool)
    rt.resources.push_async_callback(ledger_conn.release)

    async def record(files: Sequence[NewFile]) -> list[LedgerRow]:
        return await ledger_conn.run(partial(ledger.record_discovered, files=files))

    committer = Committer(
        record=record,
        publish=producer.publish_all,
        batch_size=settings.commit_batch_size,
        sync=partial(make_durable, fsync=settings.fsync),
    )
    metrics = ReceiverMetrics.create(rt.registry)

    async def lookup(source: str, refs: Sequence[tuple[str, str]]) -> dict[str, State]:
        async with pool.acquire() as conn:
            return await commitment_states(conn, source, refs)

    commitment = (
        CommitmentSCP(
            ae_title=settings.ae_title,
            lookup=lookup,
            peers=parse_peers(settings.commitment_peers),
            wait_seconds=settings.commitment_wait_seconds,
            poll_seconds=settings.commitment_poll_seconds,
        )
        if settings.commitment
        else None
    )
    scp = StoreSCP(settings, committer, metrics, commitment)
    cleanup = StagingCleanup(
        pool,
        owner=f"dicom-receiver:{settings.staging_dir.absolute()}",
        root=settings.staging_dir,
        source_like="dicom:%",
        retention=Retention.of(settings),
        removed=metrics.staging_removed,
        hour_folders=True,
    )

    async def staging_space() -> bool:
        return await asyncio.to_thread(free_mb, settings.staging_dir) >= settings.min_free_mb

    rt.readiness.add("staging_space", staging_space)

    async def dicom_port() -> bool:
        return scp.server is not None and scp.server.is_serving()

    rt.readiness.add("dicom_port", dicom_port)

    others = None
    if first and settings.processes > 1:
        others = OtherProcesses(settings.processes, settings.port, settings.ops_port)

        async def processes() -> bool:
            return others.alive()

        rt.readiness.add("processes", processes)

    async def serve_dicom() -> None:
        host, port = await scp.start()
        log.info(
            "dicom port open",
            host=host,
            port=port,
            ae_title=settings.ae_title,
            process=settings.process_index,
        )
        drained = asyncio.Event()
        commits = asyncio.create_task(committer.run(drained))
        try:
            if others is not None:
                others.port = port  # RECEIVER_PORT=0: the port this one got
                await others.start()
                await others.watch(rt.stopping)  # raises when one dies: the service ends
            else:
                await rt.stopping.wait()
        finally:
            if others is not None:
                others.terminate()  # each stops as this one does, in parallel
            # No new associations; open ones are aborted (what they had not been answered
            # for stays with the sender); what was queued is still committed.
            await scp.stop()
            drained.set()
            await commits
            if others is not None:
                await others.wait()

    rt.add_worker("dicom", serve_dicom)
    if first:  # one cleanup for the staging folder the processes share
        rt.every("staging-cleanup", settings.cleanup_interval_seconds, cleanup.periodic)
