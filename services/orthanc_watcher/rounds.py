"""What the Orthanc watcher does: take instances in once (download to staging, record in the
ledger, emit `dicom.discovered.v1`), follow the /changes feed, tidy up after the pipeline."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from libs.contracts.events import Event
from libs.db.ledger import LedgerRow, NewFile, discovered_event
from libs.db.orthanc import Finished, StagedInstance
from libs.runtime.logging import get_logger
from libs.staging.files import sync_folder
from libs.storage.local import file_url
from services.orthanc_watcher.client import ChangesPage, Level, ResourceNotFound

log = get_logger(__name__)
SOURCE = "orthanc"
# Orthanc's resource ids: a SHA-1 in five dash-separated groups. Anything else never becomes
# part of a REST path or a staging file name.
ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
INSTANCE_CHANGES = frozenset({"NewInstance"})
STUDY_CHANGES = frozenset({"StableStudy"})
WEBHOOK_BATCH = 100

Publish = Callable[[Sequence[Event]], Awaitable[None]]


class Orthanc(Protocol):
    url: str

    async def changes(self, since: int, limit: int) -> ChangesPage: ...
    async def instances_of(self, level: Level, resource_id: str) -> list[str]: ...
    async def download(self, instance_id: str, target: Path) -> int: ...
    async def delete(self, instance_id: str) -> None: ...


class InstanceStore(Protocol):
    async def cursor(self) -> int | None: ...
    async def unknown(self, instance_ids: Sequence[str]) -> list[str]: ...
    async def record(
        self, staged: Sequence[StagedInstance], last_seq: int | None = None
    ) -> list[LedgerRow]: ...
    async def finished(self) -> list[Finished]: ...
    async def mark_cleaned(self, instance_ids: Sequence[str]) -> None: ...


def staged_path(staging: Path, instance_id: str) -> Path:
    if not ORTHANC_ID.fullmatch(instance_id):
        raise ValueError(f"not an Orthanc resource id: {instance_id[:80]!r}")
    return staging / instance_id[:2] / f"{instance_id}.dcm"


async def ingest(
    instance_ids: Sequence[str],
    *,
    orthanc: Orthanc,
    store: InstanceStore,
    publish: Publish,
    staging: Path,
    last_seq: int | None = None,
) -> int:
    """Stage and emit each instance not taken in yet; returns how many were emitted.
    `last_seq` moves the feed's cursor in the same transaction as the ledger rows."""
    staged: list[StagedInstance] = []
    for instance_id in await store.unknown(instance_ids):
        path = staged_path(staging, instance_id)
        try:
            size = await orthanc.download(instance_id, path)
        except ResourceNotFound:
            log.info("instance deleted from Orthanc before download", instance_id=instance_id)
            continue
        origin = f"{orthanc.url}/instances/{instance_id}"
        new = NewFile(SOURCE, file_url(path), origin, size, uuid.uuid4().hex)
        staged.append(StagedInstance(instance_id, str(path), new))
    if staged:  # the downloads are durable before the ledger says they exist
        await asyncio.to_thread(sync_folder, staging)
    rows = await store.record(staged, last_seq)
    await publish([discovered_event(r) for r in rows])
    if rows:
        log.info("instances taken in", count=len(rows), last_seq=last_seq)
    return len(rows)


async def follow_once(
    *, orthanc: Orthanc, store: InstanceStore, publish: Publish, staging: Path, limit: int
) -> tuple[int, bool]:
    """Read one page of /changes after the cursor and take in its new instances and stable
    studies' instances; returns (instances emitted, whether the feed is read to its end)."""
    since = await store.cursor() or 0
    page = await orthanc.changes(since, limit)
    if not page.changes:
        return 0, True
    ids: list[str] = []
    for change in page.changes:
        if change.change_type in INSTANCE_CHANGES:
            ids.append(change.resource_id)
        elif change.change_type in STUDY_CHANGES:
            try:
                ids += await orthanc.instances_of("Study", change.resource_id)
            except ResourceNotFound:
                log.info("study deleted from Orthanc", study=change.resource_id)
    emitted = await ingest(
        ids, orthanc=orthanc, store=store, publish=publish, staging=staging, last_seq=page.last
    )
    return emitted, page.done


async def ingest_resource(
    level: Level,
    resource_id: str,
    *,
    orthanc: Orthanc,
    store: InstanceStore,
    publish: Publish,
    staging: Path,
) -> int:
    """A webhook's resource (study, series or instance): every instance of it, once, in
    batches of `WEBHOOK_BATCH` (a large study's first instances move on early)."""
    try:
        ids = await orthanc.instances_of(level, resource_id)
    except ResourceNotFound:
        log.warning("webhook resource not in Orthanc", level=level, resource_id=resource_id)
        return 0
    emitted = 0
    for start in range(0, len(ids), WEBHOOK_BATCH):
        batch = ids[start : start + WEBHOOK_BATCH]
        emitted += await ingest(
            batch, orthanc=orthanc, store=store, publish=publish, staging=staging
        )
    return emitted


async def clean_up(*, orthanc: Orthanc, store: InstanceStore, delete_from_orthanc: bool) -> int:
    """Remove staged copies of instances the pipeline has stored; with `delete_from_orthanc`,
    delete indexed and duplicate instances (stored here) from Orthanc too."""
    done = await store.finished()
    for f in done:
        Path(f.staged_path).unlink(missing_ok=True)
        if delete_from_orthanc and f.status in ("indexed", "duplicate"):
            await orthanc.delete(f.instance_id)
    await store.mark_cleaned([f.instance_id for f in done])
    return len(done)
