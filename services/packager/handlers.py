"""Pre-build: when a study becomes stable, its archive is built before anyone asks."""

from __future__ import annotations

from libs.contracts.events import Event, StudyMetadata
from services.packager.packager import Packager


async def handle_metadata(event: StudyMetadata, *, packager: Packager) -> list[Event]:
    """Builds the whole-study tar.zst of a stable study (announced on dicom.archive.v1 by
    the build itself); an unchanged revision is already cached and costs one query."""
    if not event.stable:
        return []
    plan = await packager.plan(event.study_uid, None, "tar.zst")
    if plan is not None:
        await packager.ensure(plan)
    return []
