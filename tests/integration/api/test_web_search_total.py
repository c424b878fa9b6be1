"""The study browser in headless Chromium when the server stops counting (its
API_SEARCH_COUNT_LIMIT, here 3 of 6 studies): the page says "3+ studies", the range
"1–2 of 3+", and Next stays offered until a page reaches the end, where the count is exact
again ("5–6 of 6", no Next). A screenshot is kept in tests/artifacts/web-search-total.png."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from playwright.async_api import expect
from prometheus_client import CollectorRegistry

from libs.db.apikeys import create_key
from libs.runtime.probes import Readiness, http_server
from libs.tools.dev_broker import free_port
from services.api.app import create_app
from services.api.config import ApiLimits
from tests.integration.api.test_docs_pages import ARGS, ARTIFACTS, CHROMIUM
from tests.integration.api.test_search import _seed
from tests.polling import eventually


@pytest.fixture
async def base_url(pool: asyncpg.Pool) -> AsyncIterator[str]:
    async def publish(_: object) -> None:
        return None

    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT count(*) FROM studies"):
            await _seed(conn)
    app = create_app(
        pool,
        publish,
        CollectorRegistry(),
        Readiness(),
        limits=ApiLimits(search_count_limit=3),
        packager=httpx.AsyncClient(),
    )
    port = free_port()
    server = http_server(app, "127.0.0.1", port)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, 20, what="the API did not start", interval=0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def test_a_total_beyond_the_count_limit_reads_as_a_lower_bound(
    base_url: str, pool: asyncpg.Pool
) -> None:
    from playwright.async_api import async_playwright

    async with pool.acquire() as conn:
        _, key = await create_key(conn, "clinician", "Dr. Петрова")
    problems: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = await browser.new_page(locale="en-GB")
            page.on("pageerror", lambda error: problems.append(f"exception: {error}"))
            page.on(
                "console",
                lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None,
            )
            await page.goto(f"{base_url}/signin?next=%2F%3Flimit%3D2")
            await page.get_by_label("Access key").fill(key)
            await page.keyboard.press("Enter")
            await expect(page).to_have_url(f"{base_url}/?limit=2")
            await expect(page.locator("#status")).to_have_text("3+ studies, newest first.")
            await expect(page.locator("#range")).to_have_text("1–2 of 3+")
            await expect(page.get_by_role("link", name="← Previous")).to_be_hidden()
            await page.screenshot(path=ARTIFACTS / "web-search-total.png")
            await page.get_by_role("link", name="Next →").click()
            await expect(page.locator("#range")).to_have_text("3–4 of 4+")
            await page.get_by_role("link", name="Next →").click()
            await expect(page.locator("#range")).to_have_text("5–6 of 6")
            await expect(page.locator("#status")).to_have_text("6 studies, newest first.")
            await expect(page.get_by_role("link", name="Next →")).to_be_hidden()
            await page.goto(f"{base_url}/?modality=CT")  # 2 match: counted exactly
            await expect(page.locator("#status")).to_have_text("2 studies found.")
        finally:
            await browser.close()
    assert not problems, problems
