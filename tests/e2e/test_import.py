"""A hospital's batch import, end to end: counts, search, bytes, poison messages."""

from __future__ import annotations

import hashlib
from pathlib import Path

import asyncpg
import pytest
from trees import build_tree

from libs.storage import open_store
from libs.storage.local import path_from_file_url
from load_test.process_stack import Stack


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def stored_sha(storage_url: str, url: str) -> str:
    """SHA-256 of a stored object, read back through its backend (file:// or gs://)."""
    store = open_store(storage_url)
    assert url.startswith(store.url + "/"), (url, store.url)
    digest = hashlib.sha256()
    async for chunk in store.read(url[len(store.url) + 1 :]):
        digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("storage_backend", ["file", "gs"])
async def test_import_counts_search_and_bytes(stack: Stack, pool: asyncpg.Pool) -> None:
    tree = stack.root / "imports" / "batch1"
    expected = build_tree(tree)
    task_id = await stack.start_import(tree)
    task = await stack.wait_task(task_id)
    assert task["status"] == "completed", task
    counters = {k: task["counters"][k] for k in expected.counters()}
    assert counters == expected.counters()
    reasons = {f["uri"].rsplit("/", 1)[-1]: f["reason"] for f in task["counters"]["failures"]}
    assert set(reasons) == {"empty.dcm", "notes.txt", "truncated.dcm"}
    assert all(reasons.values())

    async with stack.client() as c:
        for name in set(expected.patient_names):
            query = name.replace("^", " ")
            body = (await c.get("/v1/studies", params={"patient_name": query})).json()
            assert body["total"] >= 1, (query, body)
        body = (await c.get("/v1/studies", params={"limit": 100})).json()
        assert sorted(s["study_uid"] for s in body["items"]) == sorted(expected.study_uids)

    # Every stored instance is byte-identical to the source file that claimed it.
    rows = await pool.fetch(
        "SELECT i.storage_url, f.uri FROM instances i JOIN ingest_files f ON f.id = i.first_file_id"
    )
    assert len(rows) == expected.new
    for r in rows:
        stored = await stored_sha(stack.env["STORAGE_URL"], r["storage_url"])
        assert stored == sha(path_from_file_url(r["uri"]))
    conflicts = await pool.fetch("SELECT storage_url FROM conflicts")
    assert len(conflicts) == 1
    assert "/conflicts/" in conflicts[0]["storage_url"]
