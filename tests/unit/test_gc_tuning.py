"""Services tune the garbage collector once wired (libs.runtime.gc_tuning): what start-up
built is frozen out of the collector's sight and young collections are rarer."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

from libs.runtime.sandbox import IsolatedExecutor

PROBE = """
import gc, json
from libs.runtime import gc_tuning
before = (gc.get_threshold(), gc.get_freeze_count())
gc_tuning.tune()
print(json.dumps({"before": before, "after": (gc.get_threshold(), gc.get_freeze_count())}))
"""


def probe(**env: str) -> dict[str, list[object]]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def test_tune_freezes_what_exists_and_raises_the_thresholds() -> None:
    from libs.runtime.gc_tuning import OLDER, YOUNG

    result = probe()
    (threshold, frozen_before) = result["before"]
    assert threshold == [700, 10, 10] and frozen_before == 0
    (threshold, frozen) = result["after"]
    assert threshold == [YOUNG, *OLDER]
    assert isinstance(frozen, int) and frozen > 1000, "the imported modules' objects"


def test_the_defaults_can_be_kept_for_a_comparison() -> None:
    result = probe(DICOMFLOW_GC_DEFAULTS="1")
    assert result["after"] == [[700, 10, 10], 0]


def gc_state() -> tuple[tuple[int, int, int], int]:
    return gc.get_threshold(), gc.get_freeze_count()


async def test_parser_processes_run_tuned() -> None:
    """The isolated workers (the extractor's parsers, the renderers) tune it after their
    preloads, as services do after wiring."""
    from libs.runtime.gc_tuning import OLDER, YOUNG

    executor = IsolatedExecutor(workers=1, memory_limit_mb=1024, timeout_s=60)
    try:
        await executor.warm_up()
        threshold, frozen = await executor.run(gc_state)
    finally:
        executor.close()
    assert threshold == (YOUNG, *OLDER) and frozen > 1000
