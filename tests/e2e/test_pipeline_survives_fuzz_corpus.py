"""The malformed and CVE-targeted corpus through the running pipeline: every file reaches a
final outcome (indexed, or dead-lettered with a reason); no service crashes or hangs."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
import httpx
import pytest

from libs.storage.local import path_from_file_url
from load_test.process_stack import PIPELINE, Stack

CORPUS = Path(  # beside the project; DICOM_FUZZ_CORPUS where a checkout lives elsewhere
    os.environ.get("DICOM_FUZZ_CORPUS")
    or Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom-fuzz-corpus-v3"
)


@pytest.mark.stack_env(NAS_IMPORT_ROOTS=str(CORPUS))
@pytest.mark.parametrize("storage_backend", ["file", "gs"])
async def test_every_hostile_file_reaches_a_final_outcome(stack: Stack, pool: asyncpg.Pool) -> None:
    assert CORPUS.is_dir(), f"the shared fuzz corpus is missing at {CORPUS}"
    files = [p for p in CORPUS.rglob("*") if p.is_file() and not p.name.startswith(".")]
    task = await stack.wait_task(await stack.start_import(CORPUS), timeout=300)
    counters = task["counters"]
    assert task["status"] == "completed", task
    assert counters["files_scanned"] == len(files)
    assert counters["pending"] == 0
    finished = sum(counters[k] for k in ("new_instances", "duplicates", "conflicts", "failed"))
    assert finished == len(files)
    assert counters["failed"] > 0 and counters["new_instances"] > 0
    assert all(f["reason"] and f["stage"] for f in counters["failures"])
    print(f"\nfuzz corpus: { ({k: v for k, v in counters.items() if k != 'failures'}) }")
    # Nothing crashed: every stage is still the process we started, and ready.
    for name in PIPELINE:
        assert stack.procs[name].poll() is None, f"{name} died:\n{stack.tail(name)}"
    async with httpx.AsyncClient() as client:
        for name in PIPELINE:
            r = await client.get(f"http://127.0.0.1:{stack.ports[name]}/ready")
            assert r.status_code == 200, (name, r.text)
    # Polyglot preambles (JSON of CVE-2023-33466, 0xFF) are refused, each with its reason.
    polyglots = {str(p) for p in files if _hostile_preamble(p.read_bytes()[:132])}
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT origin, status, reason FROM ingest_files WHERE origin = ANY($1::text[])",
            list(polyglots),
        )
    assert len(polyglots) == 4 and {r["origin"] for r in rows} == polyglots
    for r in rows:
        assert r["status"] == "failed" and "polyglot preamble: " in r["reason"], r
    url = stack.env.get("STORAGE_URL", "")
    if url.startswith("file:"):  # and nothing stored carries one
        stored = [p for p in path_from_file_url(url).rglob("*") if p.is_file()]
        assert stored and not any(_hostile_preamble(p.read_bytes()[:132]) for p in stored)
    # Nothing was written outside the storage root.
    assert not any(p.is_file() for p in (stack.root / "imports").rglob("*"))


def _hostile_preamble(head: bytes) -> bool:
    return (
        head[128:] == b"DICM"
        and head[:128] != bytes(128)
        and head[:4] not in (b"II*\x00", b"MM\x00*")
    )
