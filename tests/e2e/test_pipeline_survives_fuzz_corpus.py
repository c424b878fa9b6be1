"""The malformed and CVE-targeted corpus through the running pipeline: every file reaches a
final outcome (indexed, or dead-lettered with a reason); no service crashes or hangs; and each
file's outcome is the one its category (the corpus manifest) allows."""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from libs.dicom.uids import is_valid_uid
from libs.storage import open_store
from libs.storage.local import path_from_file_url
from load_test.process_stack import PIPELINE, Stack

CORPUS = Path(  # beside the project; DICOM_FUZZ_CORPUS where a checkout lives elsewhere
    os.environ.get("DICOM_FUZZ_CORPUS")
    or Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom-fuzz-corpus-v3"
)


@pytest.mark.stack_env(NAS_IMPORT_ROOTS=str(CORPUS))
@pytest.mark.parametrize("storage_backend", ["file", "gs"])
async def test_every_hostile_file_reaches_a_final_outcome(
    stack: Stack, pool: asyncpg.Pool, storage_backend: str
) -> None:
    assert CORPUS.is_dir(), f"the shared fuzz corpus is missing at {CORPUS}"
    corpus_before = files_under(CORPUS)
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
    await assert_each_file_meets_its_category(stack, pool, task["task_id"])
    # Nothing was written outside the storage root: the source tree is as it was, and the
    # services (whose working folder is the stack's root) wrote only to storage and logs.
    assert files_under(CORPUS) == corpus_before, "the imported folder was written to"
    written = {Path(name).parts[0] for name in files_under(stack.root)}
    expected = {"logs", "storage"} if storage_backend == "file" else {"logs"}
    assert written == expected


def _hostile_preamble(head: bytes) -> bool:
    return (
        head[128:] == b"DICM"
        and head[:128] != bytes(128)
        and head[:4] not in (b"II*\x00", b"MM\x00*")
    )


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root`: its size and modification time, by relative path."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


ACCEPTED = {"indexed", "duplicate", "conflict"}
# The manifest's unconditional accepts (the rest are "accept or reject").
MUST_ACCEPT = {"Accept", "Accept with correct parsing", "Accept (preamble is unused by standard)"}
UID_TAGS = {"(0008,0018)", "(0020,000D)", "(0020,000E)"}


def on_disk(manifest_name: str) -> Path:
    """Names were made filesystem-safe: characters outside A-Za-z0-9._- became `_`."""
    folder, _, name = manifest_name.rpartition("/")
    return CORPUS / folder / re.sub(r"[^A-Za-z0-9._-]", "_", name)


def expectation(case: dict[str, Any], path: Path) -> str:
    """What the file must become: `refused` (failed with a reason), `accepted`, or `safe`
    (refused, or accepted with valid UIDs and stored with a clean preamble)."""
    behaviour = case["expected_behavior"]
    if _hostile_preamble(path.read_bytes()[:132]) or behaviour.startswith("Preamble polyglot"):
        return "refused"
    if behaviour in MUST_ACCEPT:
        return "refused" if case.get("target_tag") in UID_TAGS else "accepted"
    return "safe"


async def assert_each_file_meets_its_category(
    stack: Stack, pool: asyncpg.Pool, task_id: str
) -> None:
    """One ledger row per corpus file, judged against its manifest case: every failure has
    its stage and reason, polyglots are refused as such, the unconditional accepts are
    accepted, and whatever a CVE file became, what is stored of it has valid UIDs and a
    preamble of zeros (or TIFF)."""
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    cases = {on_disk(c["filename"]): (cat["name"], c) for cat in manifest["categories"]
             for c in cat["cases"]}  # fmt: skip
    rows = await pool.fetch(
        """SELECT f.origin, f.status, f.reason, f.stage, f.sop_instance_uid, i.storage_url
             FROM ingest_files f LEFT JOIN instances i ON i.first_file_id = f.id
            WHERE f.task_id = $1""",
        task_id,
    )
    by_origin = {r["origin"]: r for r in rows}
    assert len(by_origin) == len(rows), "a corpus file has two ledger rows"
    store = open_store(stack.env["STORAGE_URL"])
    prefix = store.url.rstrip("/") + "/"
    table: dict[str, Counter[str]] = defaultdict(Counter)
    wrong = []
    for path, (category, case) in sorted(cases.items()):
        row = by_origin.get(str(path))
        assert row is not None, f"{path.name}: no ledger row"
        status = row["status"]
        table[category][status] += 1
        if status == "failed":
            assert row["reason"] and row["stage"], f"{path.name}: failed without a reason"
        want = expectation(case, path)
        if want == "refused" and status != "failed":
            wrong.append(f"{path.name}: {status}, must be refused")
        if want == "accepted" and status not in ACCEPTED:
            wrong.append(f"{path.name}: {status} ({row['reason']}), must be accepted")
        if _hostile_preamble(path.read_bytes()[:132]):
            assert "polyglot preamble: " in (row["reason"] or ""), (path.name, row["reason"])
        if status in ACCEPTED:  # accepted: its UID is a UID, whatever the file claimed
            assert is_valid_uid(row["sop_instance_uid"] or ""), (path.name, row)
        if row["storage_url"]:  # the object stored from this very file
            key = row["storage_url"][len(prefix) :]
            head = b"".join([c async for c in store.read(key)])[:132]
            assert not _hostile_preamble(head), f"{path.name}: stored with a hostile preamble"
            table[category]["stored"] += 1
    baseline = by_origin[str(CORPUS / manifest["baseline_file"])]
    assert baseline["status"] == "indexed" and baseline["storage_url"], baseline
    assert not wrong, "\n".join(wrong)
    print(f"\nfuzz corpus through the pipeline ({stack.env['STORAGE_URL'].split(':')[0]}):")
    for category in sorted(table):
        print(
            f"  {category:40s} " + ", ".join(f"{k} {v}" for k, v in sorted(table[category].items()))
        )
