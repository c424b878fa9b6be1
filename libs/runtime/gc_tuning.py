"""Garbage collector settings for long-running services and their worker processes.

A stage handles thousands of small objects per batch (events, models, log records), so with
CPython's default thresholds (700, 10, 10) the collector runs a young collection every few
hundred allocations and a full one every hundred of those, each full one walking every object
the process imported at start (pydicom's dictionaries, pydantic's schemas, aiokafka): ~7% of
the storage-writer's CPU samples on the ingest bench (ADR 0032's profile).

`tune()` runs once wiring is done: one collection, then `gc.freeze()` moves everything alive
(modules, settings, pools: objects that live as long as the process) out of the collector's
sight, and the young generation is allowed to grow to `YOUNG` objects before a collection.
Reference counting still frees almost everything at once; only reference cycles wait for a
collection, so memory stays bounded by the thresholds.
"""

from __future__ import annotations

import gc
import os

YOUNG = 20_000  # allocations (net) before a young collection; CPython's default is 700
OLDER = (20, 20)  # young collections before a middle one, middle before a full one


def tune() -> None:
    if os.environ.get("DICOMFLOW_GC_DEFAULTS") == "1":  # A/B switch for measurements
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, *OLDER)
