"""A source file's stamp: what lets a copy skip hashing bytes that were already hashed.

The extractor hashes each source file; the storage-writer copies it later and used to hash
the copy again to prove the source had not changed in between. The stamp proves the same
the way git and rsync do: `inode:size:mtime_ns:ctime_ns`, taken when the file was opened
for hashing and again after it, kept only when both agree and the file's change times are
at least `MIN_AGE_NS` old. Any write since changes mtime (and ctime, which no one can set
back: `utime` itself moves it); a write within the same timestamp tick as the hashing
cannot happen, since the times were already 2 s old when it started. A stamp that differs
at copy time (a touched, chmod'ed, rewritten or replaced file) means: hash as before.

A file one of our own sources wrote, closed and recorded before announcing it (`own`: the
DICOM receiver's staging folder) has no writer at work on it any more, so it need not have
rested for 2 s: `OWN_MIN_AGE_NS` is enough for a write nobody expects to land in a later
timestamp tick than the file's last change (ADR 0031).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

# Older than any filesystem's timestamp granularity (ext4, XFS: the kernel tick; NFS: the
# server's; FAT: 2 s).
MIN_AGE_NS = 2_000_000_000
# Twice the kernel's coarsest tick (HZ=100: 10 ms), which is the granularity of a local
# filesystem's nanosecond timestamps.
OWN_MIN_AGE_NS = 20_000_000
_MS = 1_000_000


def _stamp(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def source_stamp(
    before: os.stat_result,
    after: os.stat_result,
    *,
    now_ns: int | None = None,
    own: bool = False,
) -> str | None:
    """The stamp of a file read between `before` and `after` (its fstat), or None when it
    changed meanwhile or its change times are too recent to vouch for its bytes: less than
    `MIN_AGE_NS` before `now_ns`, a time taken before the file was first read. With `own`
    (a file our own source closed before announcing it) `OWN_MIN_AGE_NS`, on a filesystem
    whose ctime shows sub-millisecond digits (nanosecond timestamps, so the kernel's tick
    is their granularity; ext4 with small inodes keeps whole seconds, FAT 10 ms or 2 s)."""
    stamp = _stamp(before)
    if _stamp(after) != stamp:
        return None
    now = time.time_ns() if now_ns is None else now_ns
    min_age = MIN_AGE_NS
    if own and before.st_ctime_ns % _MS:
        min_age = OWN_MIN_AGE_NS
    if now - max(before.st_mtime_ns, before.st_ctime_ns) < min_age:
        return None
    return stamp


def shows_stamp(st: os.stat_result, stamp: str) -> bool:
    """The file (its fstat) still is the one that was stamped."""
    return _stamp(st) == stamp


def own_roots(folders: Sequence[os.PathLike[str] | str]) -> tuple[str, ...]:
    """Folders our own sources stage files in, as `is_own` compares them: absolute and
    normalised, each ending with the separator."""
    return tuple(os.path.join(os.path.abspath(f), "") for f in folders)


def is_own(path: str, roots: Sequence[str]) -> bool:
    """`path` names a file inside one of `roots` (from `own_roots`); `..` is resolved
    first, so a name cannot climb out of a root it starts with."""
    normal = os.path.normpath(path)
    return os.path.isabs(normal) and normal.startswith(tuple(roots))
