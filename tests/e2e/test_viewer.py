"""The OHIF Viewer as a clinician uses it: Debian's Chromium (headless, driven by Playwright,
no browser download) against the running stack with the demo studies. Sign in, the study
list shows the demo patients with their Cyrillic names, a CT study opens and its image is on
the viewport's canvas; every request the page made went to this stack and succeeded.

Screenshots in tests/artifacts/: ohif-study-list.png, ohif-search.png, ohif-ct.png; the time
to the study list and from opening the study to its first image in ohif-timings.json."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import BrowserContext, Page, async_playwright

from libs.dicom.synthetic import generate_demo_set, synthetic_uid
from load_test.process_stack import Stack

# One parser process: the extractor is ready sooner on a busy machine.
pytestmark = pytest.mark.stack_env(EXTRACTOR_WORKERS="1")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
LOAD_MS = 120_000  # OHIF's 17 MB bundle on two busy cores
CT_STUDY = synthetic_uid("demo:DEMO0001:study:0")  # Иванов^Иван, one CT series of 10
# OHIF shows PN as "Family, Given Middle": Cyrillic (ISO_IR 144), Latin-1 and UTF-8 files.
# The browser asks for Russian: OHIF's own words may come in either language.
BASIC_VIEWER = re.compile(r"^(Basic Viewer|Базовый просмотр)$")
SKIP_TOUR = re.compile(r"^(Skip all|Пропустить все)$")
DEMO_NAMES = ["Иванов, Иван", "Петрова, Анна Сергеевна", "Müller, José", "Smith, John"]


@pytest.fixture
def extra_env(viewer_dist: Path) -> dict[str, str]:
    return {"API_VIEWER_DIR": str(viewer_dist)}


@dataclass
class BrowserLog:
    """Every request the page made, and what went wrong: failed or >= 400 responses,
    console errors (CSP violations among them) and uncaught exceptions."""

    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def attach(self, context: BrowserContext) -> None:
        context.on("request", lambda r: self.requests.append(r.url))
        context.on("requestfailed", lambda r: self.failed.append(f"{r.url}: {r.failure}"))
        context.on(
            "response",
            lambda r: self.failed.append(f"{r.url}: {r.status}") if r.status >= 400 else None,
        )

    def watch(self, page: Page) -> None:
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def __str__(self) -> str:
        return f"failed requests: {self.failed}\nconsole errors: {self.errors}"

    def foreign_hosts(self) -> set[str]:
        hosts = {
            urlsplit(u).hostname
            for u in self.requests
            if urlsplit(u).scheme in ("http", "https", "ws", "wss")
        }
        return {h or "" for h in hosts} - {"127.0.0.1"}


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh profile: no cache, no cookies
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
            locale="ru-RU",
        )
        try:
            yield context
        finally:
            await context.close()


async def _import_demo(stack: Stack) -> None:
    tree = stack.root / "imports" / "demo"
    count = generate_demo_set(tree)
    task = await stack.wait_task(await stack.start_import(tree))
    assert task["status"] == "completed", task
    assert task["counters"]["new_instances"] == count, task


async def _canvas_pixels(page: Page) -> dict[str, Any]:
    """What the viewport's canvas shows: its size, non-black pixels, distinct grey levels."""
    result: dict[str, Any] = await page.evaluate(
        """() => {
        const canvas = document.querySelector('canvas.cornerstone-canvas');
        if (!canvas || !canvas.width) return {found: false};
        const ctx = canvas.getContext('2d');
        const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
        let lit = 0; const levels = new Set();
        for (let i = 0; i < data.length; i += 4) {
            const v = data[i] + data[i + 1] + data[i + 2];
            if (v > 30) lit++;
            levels.add(data[i]);
        }
        return {found: true, width: canvas.width, height: canvas.height,
                lit: lit / (data.length / 4), levels: levels.size};
    }"""
    )
    return result


async def test_ohif_shows_the_demo_studies_and_a_ct_image(
    stack: Stack, browser: BrowserContext
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await _import_demo(stack)
    log = BrowserLog()
    log.attach(browser)

    # Not signed in: the viewer sends the browser to the sign-in page, coming back after.
    bounced = await browser.request.get(f"{stack.api}/viewer/", max_redirects=0)
    assert bounced.status == 302
    assert bounced.headers["location"] == "/signin?next=/viewer/"

    # Sign in as the sign-in page does (same origin): the cookie lands in the browser.
    signed = await browser.request.post(
        f"{stack.api}/v1/session", data={"key": stack.key}, headers={"Origin": stack.api}
    )
    assert signed.ok, await signed.text()
    cookies = {c["name"]: c for c in await browser.cookies()}
    assert cookies["dicomflow_session"]["httpOnly"] is True
    assert stack.key not in str(cookies)

    page = await browser.new_page()
    log.watch(page)
    started = time.monotonic()
    await page.goto(f"{stack.api}/viewer/", wait_until="domcontentloaded")
    # The study list, as OHIF shows it from QIDO-RS: one row per demo study.
    row = page.locator("tr", has_text="Иванов, Иван")
    try:
        await row.wait_for(state="visible", timeout=LOAD_MS)
    except Exception as exc:
        await page.screenshot(path=str(ARTIFACTS / "ohif-failure.png"))
        raise AssertionError(f"no study list\n{log}\n{stack.tail('api')}") from exc
    timings = {"study_list_s": time.monotonic() - started}
    for name in DEMO_NAMES:
        await page.locator("tr", has_text=name).first.wait_for(state="visible", timeout=10_000)
    studies = page.locator("tbody tr:not(:has(input))")  # the first row holds the filters
    rows = await studies.all_inner_texts()
    assert len(rows) == 6, rows  # the demo set's six studies
    await page.locator('[data-cy="confirm-and-hide-button"]').click()  # OHIF's notice
    await page.screenshot(path=str(ARTIFACTS / "ohif-study-list.png"))
    # A search by name typed in lower case finds the Cyrillic patient (QIDO PatientName with
    # OHIF's wildcards and fuzzymatching).
    await page.locator("tr:has(input) input").first.fill("иванов")  # the Patient filter
    await page.wait_for_function(
        "() => document.querySelectorAll('tbody tr:not(:has(input))').length === 1", timeout=30_000
    )
    (found,) = await studies.all_inner_texts()
    assert "Иванов, Иван" in found, found
    await page.screenshot(path=str(ARTIFACTS / "ohif-search.png"))

    # Open the CT study as a clinician does: its row, then the basic viewer.
    await row.click()
    await page.get_by_role("button", name=BASIC_VIEWER).click()
    opened = time.monotonic()
    await page.wait_for_url(f"**/viewer/viewer?StudyInstanceUIDs={CT_STUDY}*", timeout=LOAD_MS)
    pixels: dict[str, Any] = {}
    for _ in range(LOAD_MS // 500):
        pixels = await _canvas_pixels(page)
        if pixels.get("found") and pixels["lit"] > 0.05 and pixels["levels"] > 16:
            break
        await page.wait_for_timeout(500)
    timings["first_image_s"] = time.monotonic() - opened
    skip_tour = page.get_by_text(SKIP_TOUR)  # OHIF's first-visit tour
    if await skip_tour.count():
        await skip_tour.click()
    await page.screenshot(path=str(ARTIFACTS / "ohif-ct.png"))
    assert pixels.get("found") and pixels["lit"] > 0.05 and pixels["levels"] > 16, (
        pixels,
        str(log),
        stack.tail("api"),
    )
    await page.wait_for_load_state("networkidle", timeout=LOAD_MS)

    timings["requests"] = len(log.requests)
    (ARTIFACTS / "ohif-timings.json").write_text(json.dumps(timings, indent=1))
    assert log.failed == [], log.failed
    assert log.errors == [], log.errors
    assert log.foreign_hosts() == set(), log.foreign_hosts()
    assert any("/dicom-web/studies" in u for u in log.requests)
