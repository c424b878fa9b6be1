"""A source file's stamp: what lets a copy skip hashing bytes that were already hashed.

The extractor hashes each source file; the storage-writer copies it later and used to hash
the copy again to prove the source had not changed in between. The stamp proves the same
the way git and rsync do: `inode:size:mtime_ns:ctime_ns`, taken when the file was opened
for hashing and again after it, kept only when both agree and the file's change times are
at least `MIN_AGE_NS` old. Any write since changes mtime (and ctime, which no one can set
back: `utime` itself moves it); a write within the same timestamp tick as the hashing
cannot happen, since the times were already 2 s old when it started. A stamp that differs
at copy time (a touched, chmod'ed, rewritten or replaced file) means: hash as before.
"""

from __future__ import annotations

import os
import time

# Older than any filesystem's timestamp granularity (ext4, XFS: the kernel tick; NFS: the
# server's; FAT: 2 s).
MIN_AGE_NS = 2_000_000_000


def _stamp(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def source_stamp(
    before: os.stat_result, after: os.stat_result, *, now_ns: int | None = None
) -> str | None:
    """The stamp of a file read between `before` and `after` (its fstat), or None when it
    changed meanwhile or its change times are too recent to vouch for its bytes: less than
    `MIN_AGE_NS` before `now_ns`, a time taken before the file was first read."""
    stamp = _stamp(before)
    if _stamp(after) != stamp:
        return None
    now = time.time_ns() if now_ns is None else now_ns
    if now - max(before.st_mtime_ns, before.st_ctime_ns) < MIN_AGE_NS:
        return None
    return stamp


def shows_stamp(st: os.stat_result, stamp: str) -> bool:
    """The file (its fstat) still is the one that was stamped."""
    return _stamp(st) == stamp
