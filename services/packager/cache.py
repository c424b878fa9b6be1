"""The archive cache on disk: `<CACHE_DIR>/<revision key>.<format>`, size-limited, least
recently used evicted first (a hit touches the file's mtime).

Archives are written as `<name>.<random>.partial` and renamed when complete, so a cached
name always holds a whole archive; several packager replicas may share the folder. A file
being downloaded while it is evicted stays readable through the open descriptor.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from libs.logging import get_logger
from services.packager.layout import Plan

log = get_logger(__name__)
PARTIAL = ".partial"


class ArchiveCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def prepare(self) -> None:
        """Create the folder and drop partial archives a crash left behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(f"*{PARTIAL}"):
            leftover.unlink(missing_ok=True)

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
            if path.name.endswith(PARTIAL) or path == keep:
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
