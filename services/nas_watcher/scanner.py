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
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from libs.runtime.logging import get_logger

log = get_logger(__name__)

# Not instances: media indexes, hidden and temporary files of copy tools.
SKIPPED_NAMES = {"DICOMDIR", "Thumbs.db", "desktop.ini"}
SKIPPED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


# A file whose mtime and ctime are both this old is settled on the first look: ctime moves
# with every write and no copy tool can set it back, so nothing is writing to it. The margin
# is wide because a NAS's clock may be minutes off this host's.
QUIET_NS = 600 * 10**9
# On a local filesystem the times come from this host's clock: no skew to allow for, only
# the coarseness of file timestamps (a kernel tick; a second is far more than enough).
TIMESTAMP_SLACK_NS = 10**9
# Filesystems whose timestamps this host's kernel writes. Network and FUSE filesystems (NFS,
# SMB, sshfs...) take their times from a server, and FAT's "ctime" is a creation time.
LOCAL_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "overlay", "bcachefs"}
)


@dataclass(frozen=True)
class FileStat:
    name: str
    size: int
    mtime_ns: int
    ctime_ns: int = 0  # 0: unknown (never settled on the first look)

    def quiet(self, wall_ns: int, quiet_ns: int = QUIET_NS) -> bool:
        """Unchanged for `quiet_ns` by both its times (see `SecondLook`)."""
        return self.ctime_ns > 0 and wall_ns - max(self.mtime_ns, self.ctime_ns) >= quiet_ns


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
                        files.append(FileStat(entry.name, *kind))
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


def _kind(entry: os.DirEntry[str]) -> str | tuple[int, int, int] | None:
    """'dir', (size, mtime_ns, ctime_ns) for a regular file, or None (special file, broken
    link)."""
    try:
        st = entry.stat(follow_symlinks=True)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return None


def stat_file(path: str) -> FileStat | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return FileStat(os.path.basename(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class Look:
    directory: str
    file: FileStat
    at: float  # time.monotonic() of this look
    first: float  # of the first look at this file in this scan


class SecondLook:
    """A file is settled only when its size and mtime are the same on two looks at least
    `settle_seconds` apart. Its mtime alone proves nothing: a copy that keeps timestamps
    (Windows Explorer over SMB, `cp -p`, `rsync -a`) gives a growing file an old mtime.
    Looks wait in the order they were taken, so a long walk re-stats as it goes.

    Its ctime does: every write moves it, and no tool can set it back. A file whose mtime
    and ctime are both older than `QUIET_NS` (an import of files at rest, the usual case)
    takes its second look at once instead of `settle_seconds` later: an import's first
    files reach the extractor without waiting. `quiet_ns_of(directory)` may shorten that age
    where the clock that stamped the times is this host's (`LocalClocks`)."""

    def __init__(
        self, settle_seconds: float, quiet_ns_of: Callable[[str], int] | None = None
    ) -> None:
        self.settle_seconds = settle_seconds
        self._quiet_ns_of = quiet_ns_of
        self._queue: deque[Look] = deque()
        self._quiet: list[Look] = []  # due now, whatever the clock

    def __len__(self) -> int:
        return len(self._queue) + len(self._quiet)

    def add(
        self, directory: str, files: Iterable[FileStat], now: float, *, wall_ns: int | None = None
    ) -> None:
        wall = time.time_ns() if wall_ns is None else wall_ns
        quiet_ns = QUIET_NS if self._quiet_ns_of is None else self._quiet_ns_of(directory)
        for f in files:
            look = Look(directory, f, now, now)
            (self._quiet if f.quiet(wall, quiet_ns) else self._queue).append(look)

    def again_later(self, look: Look) -> None:
        self._queue.append(look)

    def wait(self, now: float) -> float:
        """Seconds until the oldest look is due for its second look."""
        if self._quiet or not self._queue:
            return 0.0
        return max(0.0, self._queue[0].at + self.settle_seconds - now)

    def due(self, now: float) -> list[Look]:
        out, self._quiet = self._quiet, []
        while self._queue and self._queue[0].at + self.settle_seconds <= now:
            out.append(self._queue.popleft())
        return out


class LocalClocks:
    """How long a file must have been unchanged, by its mtime and ctime, to be settled on
    the first look, per directory: on a local filesystem (`LOCAL_FILESYSTEMS`, the kernel of
    this host stamps the times) `settle_seconds` plus the timestamps' coarseness, the very
    wait two looks would make; elsewhere (a NAS's clock may be minutes off) `QUIET_NS`.
    Decided per device, so a network share mounted below a local root keeps the long age.
    One instance per scan: a device number may later name another mount."""

    def __init__(self, settle_seconds: float, mountinfo: str = "/proc/self/mountinfo") -> None:
        self._local_ns = min(QUIET_NS, int(settle_seconds * 1e9) + TIMESTAMP_SLACK_NS)
        self._mountinfo = mountinfo
        self._types: dict[str, str] | None = None  # "major:minor" -> filesystem type
        self._by_dev: dict[int, int] = {}

    def __call__(self, directory: str) -> int:
        try:
            dev = os.stat(directory).st_dev
        except OSError:
            return QUIET_NS
        if dev not in self._by_dev:
            local = self._filesystem(dev) in LOCAL_FILESYSTEMS
            self._by_dev[dev] = self._local_ns if local else QUIET_NS
        return self._by_dev[dev]

    def _filesystem(self, dev: int) -> str | None:
        if self._types is None:
            self._types = {}
            try:
                lines = Path(self._mountinfo).read_text().splitlines()
            except OSError:  # not Linux: every filesystem is taken as remote
                lines = []
            for line in lines:
                # ID parent major:minor root mountpoint options [optional...] - type source
                fields = line.split()
                if len(fields) > 3 and "-" in fields[3:]:
                    kind = fields[fields.index("-", 3) + 1 :][:1]
                    self._types.setdefault(fields[2], kind[0] if kind else "")
        return self._types.get(f"{os.major(dev)}:{os.minor(dev)}")


def look_again(looks: Iterable[Look], now: float) -> tuple[list[Look], list[Look]]:
    """(settled, changed since their look: with the new look); removed files are dropped."""
    settled, changed = [], []
    for look in looks:
        current = stat_file(os.path.join(look.directory, look.file.name))
        if current == look.file:
            settled.append(look)
        elif current is not None:
            changed.append(Look(look.directory, current, now, look.first))
    return settled, changed


def file_uri(directory: str, name: str) -> str:
    return Path(directory, name).as_uri()


def inside(path: Path, roots: list[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(r.resolve()) for r in roots)
