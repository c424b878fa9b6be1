"""Opening a discovered file for reading without being led out of its source's roots.

The scanner follows a symbolic link only when it leads inside the roots, but the file is read
later, by the extractor: a file replaced by a link to `/etc/shadow` (or a folder by a link to
another patient's share) in between would be read, stored and served. So the file is
re-checked where it is read, on the opened file itself:

- A path named under a group of roots (the NAS watcher's watched roots, or its import roots)
  is resolved, refused unless its target is inside that group (the scanner's rule), opened
  with `O_NOFOLLOW`, and the opened file's own path (`/proc/self/fd`) must still be inside
  the group: a link swapped in between the check and the open is caught either way.
- Any other path (a copy a source staged itself, never a link) is opened with `O_NOFOLLOW`.
- Either way only a regular file is read (`O_NONBLOCK`: a FIFO swapped in never blocks).

One reason whatever the target, so a refusal never tells whether a path outside exists.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from io import BufferedReader

from libs.contracts.errors import PermanentError, SourceGone

# Groups of roots, each a tuple of absolute folders: a file under a group stays inside it.
RootGroups = tuple[tuple[str, ...], ...]
OUTSIDE = "source file refused: it leads outside its source's roots (a symbolic link?)"
A_LINK = "source file refused: it is a symbolic link"
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class SourceOutsideRoots(PermanentError):
    """The file leads outside the folders it was found in: never read."""


def open_source(path: str, roots: RootGroups | None) -> BufferedReader:
    """`path` opened for binary reading, confined as the module says; `roots` None: opened
    as it is (a caller reading its own files). Raises `SourceOutsideRoots`, `SourceGone`
    (not a regular file) or the `OSError` of the open."""
    if roots is None:
        return open(path, "rb")  # the caller closes it
    lexical = os.path.abspath(path)
    groups = [[os.path.realpath(r) for r in g] for g in roots if _within(lexical, _abs(g))]
    target = os.path.realpath(lexical) if groups else lexical
    if groups and not any(_within(target, g) for g in groups):
        raise SourceOutsideRoots(OUTSIDE)
    try:
        fd = os.open(target, _FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is (now) a link
            raise SourceOutsideRoots(OUTSIDE if groups else A_LINK) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceGone(f"source file is gone or not a regular file: {path}")
        if groups and not any(_within(_opened(fd, target, st), g) for g in groups):
            raise SourceOutsideRoots(OUTSIDE)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _opened(fd: int, target: str, st: os.stat_result) -> str:
    """The path of the file open at `fd`, as the kernel knows it."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: the opened file must be the one the check resolved
        now = os.stat(target, follow_symlinks=False)
        return target if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) else ""


def _abs(group: Sequence[str]) -> list[str]:
    return [os.path.abspath(r) for r in group]


def _within(path: str, roots: Sequence[str]) -> bool:
    """`path` is one of `roots` or under one (the NAS scanner's rule)."""
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)
