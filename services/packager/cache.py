"""The archive cache on disk: `<CACHE_DIR>/<revision key>.<format>`, size-limited, least
recently used evicted first (a hit touches the file's mtime).

Archives are written as `<name>.<random>.partial` and renamed when complete, so a cached
name always holds a whole archive; several packager replicas may share the folder. A file
being downloaded while it is evicted stays readable through the open descriptor.

Archives are not fsync'ed (a GB of fsync would double a build's time). A process crash loses
nothing (the page cache survives it); a machine crash could leave a renamed archive whose
blocks never reached the disk, so the cache remembers the boot it was written in and is
emptied when the machine has booted since: a cache is cheaper to rebuild than to distrust.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from libs.runtime.logging import get_logger
from services.packager.layout import Plan

log = get_logger(__name__)
PARTIAL = ".partial"
BOOT_MARKER = ".boot-id"


def _boot_id() -> str:
    """This boot's id; Linux only (the services run in Linux containers)."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


class ArchiveCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def prepare(self) -> None:
        """Create the folder, drop partial archives a crash left behind, and every archive
        when the machine has rebooted since they were written."""
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / BOOT_MARKER
        boot = _boot_id()
        rebooted = not marker.exists() or marker.read_text() != boot
        for path in self.root.iterdir():
            if path.name.endswith(PARTIAL) or (rebooted and path != marker):
                path.unlink(missing_ok=True)
        if rebooted:
            marker.write_text(boot)

    def path(self, plan: Plan) -> Path:
        return self.root / f"{plan.key}.{plan.format}"

    def partial_path(self, plan: Plan) -> Path:
        return self.root / f"{plan.key}.{plan.format}.{uuid.uuid4().hex}{PARTIAL}"

    def lookup(self, plan: Plan) -> Path | None:
        """The cached archive, marked as just used; None on a miss."""
        path = self.path(plan)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def evict(self, keep: Path) -> list[Path]:
        """Remove the least recently used archives until the cache fits (never `keep`)."""
        entries: list[tuple[float, int, Path]] = []
        for path in self.root.iterdir():
            if path.name.endswith(PARTIAL) or path == keep or path.name == BOOT_MARKER:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries) + keep.stat().st_size
        removed: list[Path] = []
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed.append(path)
        if removed:
            log.info("cache evicted", archives=len(removed), cache_bytes=total)
        return removed
