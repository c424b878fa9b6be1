"""Walk a folder tree one directory at a time, whatever its layout.

Symlinked folders are followed once (a loop is detected by device and inode) and
only when they lead to somewhere inside the roots: a link whose target is outside
(or a folder that became one) is reported and never followed, whether its target
exists or not. Unreadable folders are reported and skipped, and only the
`DirEntry` stat is used, so a rescan costs one stat per file (plus a resolution
per link and per folder).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from libs.logging import get_logger

log = get_logger(__name__)

# Not instances: media indexes, hidden and temporary files of copy tools.
SKIPPED_NAMES = {"DICOMDIR", "Thumbs.db", "desktop.ini"}
SKIPPED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


@dataclass(frozen=True)
class FileStat:
    name: str
    size: int
    mtime_ns: int


@dataclass
class ScanProblems:
    unreadable_dirs: list[str] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)
    escaping_links: list[str] = field(default_factory=list)


def wanted(name: str) -> bool:
    return not (
        name.startswith(".") or name in SKIPPED_NAMES or name.lower().endswith(SKIPPED_SUFFIXES)
    )


def walk(
    root: Path, problems: ScanProblems | None = None, *, roots: list[Path] | None = None
) -> Iterator[tuple[str, list[FileStat]]]:
    """Yield (directory, regular files in it) for every directory under `root`, never
    leaving `roots` (default: `root` itself) through a symbolic link."""
    problems = problems if problems is not None else ScanProblems()
    real_roots = [os.path.realpath(r) for r in (roots or [root])]
    visited: set[tuple[int, int]] = set()
    stack = [os.path.abspath(root)]
    while stack:
        directory = stack.pop()
        if not _within(os.path.realpath(directory), real_roots):  # replaced by a link since
            problems.escaping_links.append(directory)
            log.warning("folder leads outside the roots, not followed", folder=directory)
            continue
        try:
            st = os.stat(directory)
        except OSError as exc:
            problems.unreadable_dirs.append(directory)
            log.warning("folder unreadable, skipped", folder=directory, error=exc.strerror)
            continue
        if (st.st_dev, st.st_ino) in visited:
            problems.loops.append(directory)
            log.warning("folder already visited (symlink loop?), skipped", folder=directory)
            continue
        visited.add((st.st_dev, st.st_ino))
        files: list[FileStat] = []
        subdirs: list[str] = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_symlink() and not _within(os.path.realpath(entry.path), real_roots):
                        problems.escaping_links.append(entry.path)
                        log.warning("link leads outside the roots, not followed", link=entry.path)
                        continue
                    kind = _kind(entry)
                    if kind == "dir":
                        subdirs.append(entry.path)
                    elif isinstance(kind, tuple) and wanted(entry.name):
                        files.append(FileStat(entry.name, kind[0], kind[1]))
        except OSError as exc:
            problems.unreadable_dirs.append(directory)
            log.warning("folder unreadable, skipped", folder=directory, error=exc.strerror)
            continue
        stack.extend(sorted(subdirs, reverse=True))
        if files:
            yield directory, sorted(files, key=lambda f: f.name)


def _within(real_path: str, real_roots: list[str]) -> bool:
    return any(
        real_path == r or real_path.startswith(r.rstrip(os.sep) + os.sep) for r in real_roots
    )


def _kind(entry: os.DirEntry[str]) -> str | tuple[int, int] | None:
    """'dir', (size, mtime_ns) for a regular file, or None (special file, broken link)."""
    try:
        st = entry.stat(follow_symlinks=True)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return (st.st_size, st.st_mtime_ns)
    return None


def stat_file(path: str) -> FileStat | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return FileStat(os.path.basename(path), st.st_size, st.st_mtime_ns)


def is_settled(f: FileStat, now_ns: int, settle_seconds: float) -> bool:
    """A file modified within the settle window may still be being written."""
    return now_ns - f.mtime_ns >= settle_seconds * 1e9


def file_uri(directory: str, name: str) -> str:
    return Path(directory, name).as_uri()


def inside(path: Path, roots: list[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(r.resolve()) for r in roots)
