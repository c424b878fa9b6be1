"""Imports a person can watch and control, on the stack as processes: a paused task is not
scanned, even across restarts of the API and the NAS watcher; files queued for a paused task
are held by the extractor and go on when it is resumed (from the web page, whose live
progress follows it to the end); a cancelled task stops and ends `cancelled` with its
counters; `dicomflow import --watch` and `dicomflow imports ...` through the real entry
point. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from browser import ARTIFACTS, chromium
from playwright.async_api import expect
from polling import eventually
from trees import build_tree

from load_test.process_stack import Stack

pytestmark = pytest.mark.timeout(600)
DICOMFLOW = Path(sys.executable).with_name("dicomflow")


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMFLOW_")}
    env.update(DICOMFLOW_URL=stack.api, DICOMFLOW_API_KEY=stack.key)
    return subprocess.run(
        [str(DICOMFLOW), *args], env=env, capture_output=True, text=True, timeout=240
    )


async def restart(stack: Stack, *names: str) -> None:
    for name in names:
        assert stack.kill(name, signal.SIGTERM) == 0, stack.tail(name)  # a clean stop
        stack.start(name)
    await stack.wait_ready(list(names))


async def post(stack: Stack, task_id: str, action: str) -> dict[str, Any]:
    async with stack.client() as c:
        r = await c.post(f"/v1/imports/{task_id}/{action}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def held(pool: asyncpg.Pool, task_id: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM ingest_files WHERE task_id = $1 AND held_at IS NOT NULL",
            task_id,
        )
    )


async def test_pause_resume_and_cancel_an_import(
    stack: Stack, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    trees = stack.root / "imports"
    first = build_tree(trees / "first", patients=1, per_series=3, extras=False)
    paused_tree = build_tree(trees / "paused", patients=2, per_series=5, extras=False)
    cancelled_tree = build_tree(trees / "cancelled", patients=1, per_series=4, extras=False)

    # Paused before any watcher took it: it is not scanned, across restarts.
    stack.pause("nas-watcher")
    task_id = await stack.start_import(trees / "paused")
    assert (await post(stack, task_id, "pause"))["status"] == "paused"
    stack.resume("nas-watcher")
    await restart(stack, "nas-watcher", "api")
    # `dicomflow import --watch`: a later task runs to the end while the paused one waits.
    done = await asyncio.to_thread(cli, stack, "import", str(trees / "first"), "--watch")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stdout.splitlines()[-1] == (
        f"completed: {first.files}/{first.files} files done, {first.new} new images, "
        "0 already stored, 1 patients (1 new), 0 failed"
    )
    assert done.stderr.strip(), "no progress line was shown"
    task = await stack.task(task_id)
    assert (task["status"], task["counters"]["files_scanned"]) == ("paused", 0)

    # Resumed with the extractor stopped: scanned and queued; paused again, the extractor
    # holds every queued file instead of reading it.
    stack.pause("extractor")
    assert (await post(stack, task_id, "resume"))["status"] == "pending"  # it never started
    await eventually(
        lambda: _scanned(stack, task_id, paused_tree.files), 60, what="scan of the resumed task"
    )
    assert (await post(stack, task_id, "pause"))["status"] == "paused"
    stack.resume("extractor")
    await eventually(lambda: _held_all(pool, task_id, paused_tree.files), 90, what="held files")
    task = await stack.task(task_id)
    assert (task["status"], task["counters"]["new_instances"]) == ("paused", 0)

    # The web page follows the task live; its Resume button sends the held files on.
    async with chromium(tmp_path / "chromium") as b:
        page = b.page
        await page.goto(f"{stack.api}/imports/{task_id}")
        await page.get_by_label("Access key").fill(stack.key)  # signs in, comes back
        await page.keyboard.press("Enter")
        await expect(page).to_have_url(f"{stack.api}/imports/{task_id}")
        await expect(page.locator("#state")).to_have_text("Paused")
        await expect(page.locator("[data-counter=pending]")).to_have_text(str(paused_tree.files))
        await page.get_by_role("button", name="Resume").click()
        await expect(page.locator("#state")).to_have_text("Completed", timeout=120_000)
        await expect(page.locator("[data-counter=new_instances]")).to_have_text(
            str(paused_tree.new)
        )
        await expect(page.locator("[data-counter=patients_new]")).to_have_text("2")
        await expect(page.locator("#patients tbody tr")).to_have_count(2)
        await expect(page.locator("#modalities tbody tr")).to_have_count(2)
        # Nothing failed: the page says so in words instead of an empty table.
        await expect(page.locator("#failures-none")).to_have_text(
            "None: every file that was read was imported."
        )
        await expect(page.locator("#failures")).to_be_hidden()
        progress = await page.eval_on_selector("#progress", "p => [p.value, p.max]")
        assert progress == [paused_tree.files, paused_tree.files]
        await expect(page.get_by_role("button", name="Pause")).to_be_hidden()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=ARTIFACTS / "web-import.png", full_page=True)
        assert b.problems == [] and b.elsewhere == []
    assert await held(pool, task_id) == 0
    stats = json.loads(cli(stack, "imports", "stats", task_id).stdout)
    assert sorted((m["modality"], m["new_instances"]) for m in stats["modalities"]) == [
        ("CT", paused_tree.new // 2),
        ("MR", paused_tree.new // 2),
    ]
    assert [p["new_to_index"] for p in stats["patients"]] == [True, True]

    # Cancelled while its files wait for the extractor: none is read, it ends cancelled,
    # and `dicomflow imports watch` says so (exit status 3).
    stack.pause("extractor")
    cancel_id = await stack.start_import(trees / "cancelled")
    await eventually(lambda: _scanned(stack, cancel_id, cancelled_tree.files), 60, what="scan")
    cancelled = cli(stack, "imports", "cancel", cancel_id)
    assert cancelled.returncode == 0 and cancelled.stdout.startswith("cancelling: "), cancelled
    stack.resume("extractor")
    watched = await asyncio.to_thread(cli, stack, "imports", "watch", cancel_id)
    assert watched.returncode == 3, (watched.stdout, watched.stderr)
    task = await stack.task(cancel_id)
    counters = task["counters"]
    assert task["status"] == "cancelled"
    assert (counters["cancelled"], counters["new_instances"], counters["pending"]) == (
        cancelled_tree.files,
        0,
        0,
    )
    refused = cli(stack, "imports", "resume", cancel_id)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "dicomflow imports: a cancelled import cannot be resumed"


async def _scanned(stack: Stack, task_id: str, files: int) -> bool:
    return bool((await stack.task(task_id))["counters"]["files_scanned"] == files)


async def _held_all(pool: asyncpg.Pool, task_id: str, files: int) -> bool:
    return await held(pool, task_id) == files
