"""Where a service's CPU goes, for the engineer chasing the next bottleneck: with
DICOMFLOW_PROFILE_DIR set, the service's event loop thread runs under cProfile and writes
`<service>-<pid>.prof` there when it stops (read with `python -m pstats` or snakeviz).
Off by default: profiling costs the profiled code about twice its CPU."""

from __future__ import annotations

import contextlib
import cProfile
import os
from collections.abc import Iterator
from pathlib import Path

from libs.runtime.logging import get_logger

log = get_logger(__name__)


@contextlib.contextmanager
def profiled(name: str, folder: Path | None) -> Iterator[None]:
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        path = folder / f"{name}-{os.getpid()}.prof"
        profile.dump_stats(path)
        log.info("profile written", path=str(path))
