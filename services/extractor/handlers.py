"""Read one discovered file's header and hashes (in an isolated parser process)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from libs.contracts.events import DicomHeader, Event, FileDiscovered, Hashes, InstanceExtracted
from libs.storage.file_uri import local_source

Parse = Callable[[str], Awaitable[tuple[DicomHeader, Hashes]]]


async def handle_discovered(event: FileDiscovered, *, parse: Parse) -> list[Event]:
    path = local_source(event.file.uri)
    header, hashes = await parse(str(path))
    return [
        InstanceExtracted(
            correlation_id=event.correlation_id,
            source=event.source,
            file=event.file,
            header=header,
            hashes=hashes,
        )
    ]
