"""/docs (Swagger UI) and /redoc work on a network without internet: the pages name no other
host, and in headless Chromium (Debian's, driven by Playwright) they render the API's
operations with every request answered by dicomflow itself; requests elsewhere are refused
and would fail the test, and what a bundle still tries elsewhere is refused by the pages'
Content-Security-Policy before any request (ReDoc's "powered by" logo, which it then drops).
Screenshots are kept as test artefacts in tests/artifacts/ (swagger-ui.png, redoc.png)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Page, Route, async_playwright
from prometheus_client import CollectorRegistry

from libs.runtime.probes import Readiness, http_server
from libs.tools.dev_broker import free_port
from services.api.app import create_app
from tests.polling import eventually

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"  # tests/artifacts, as in tests/e2e
URL_IN_PAGE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*['"]?([^'")]+)""")


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    """The real API app on a loopback port (the pages and assets touch no database)."""

    async def publish(_: object) -> None:
        return None

    app = create_app(
        None,  # type: ignore[arg-type]
        publish,
        CollectorRegistry(),
        Readiness(),
        packager=httpx.AsyncClient(),
    )
    port = free_port()
    server = http_server(app, "127.0.0.1", port)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, 20, what="the API did not start", interval=0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.mark.parametrize("page_path", ["/docs", "/redoc"])
async def test_the_html_names_no_other_host(base_url: str, page_path: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as c:
        html = (await c.get(page_path)).text
        refs = [a or b for a, b in URL_IN_PAGE.findall(html)]
        assert refs, html
        for ref in refs:
            assert not urlsplit(ref).netloc, f"{page_path} loads {ref}"
            if ref.startswith("/"):
                asset = await c.get(ref)
                assert asset.status_code == 200 and len(asset.content) > 1000, ref
        assert "fonts.googleapis" not in html and "cdn." not in html
        csp = (await c.get(page_path)).headers["content-security-policy"]
        assert "default-src 'self'" in csp and "connect-src 'self'" in csp


async def _open(page: Page, url: str, requested: list[str], refused: list[str]) -> None:
    async def only_local(route: Route) -> None:
        requested.append(route.request.url)
        host = urlsplit(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host == "127.0.0.1":
            await route.continue_()
        else:
            refused.append(route.request.url)
            await route.abort()

    await page.route("**/*", only_local)
    await page.goto(url, wait_until="networkidle")


async def test_swagger_ui_and_redoc_render_offline(base_url: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    requested: list[str] = []
    refused: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            context = await browser.new_context()  # a fresh profile every time
            page = await context.new_page()
            failed: list[tuple[str, str | None]] = []
            errors: list[str] = []
            page.on("requestfailed", lambda r: failed.append((r.url, r.failure)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            await _open(page, f"{base_url}/docs", requested, refused)
            # Swagger UI fetched the document and drew every archive operation.
            await page.wait_for_selector("#operations-archives-download_study_archive")
            assert await page.locator("#operations-archives-inspect_study_archive").count() == 1
            title = await page.locator(".info .title").inner_text()
            assert "dicomflow API" in title
            await page.screenshot(path=ARTIFACTS / "swagger-ui.png", full_page=False)

            page = await context.new_page()
            page.on("requestfailed", lambda r: failed.append((r.url, r.failure)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            await _open(page, f"{base_url}/redoc", requested, refused)
            heading = page.locator("h2", has_text="The whole study as an archive")
            await heading.wait_for(timeout=30_000)
            assert await page.locator("h1").first.inner_text() == "dicomflow API (1)"
            await page.screenshot(path=ARTIFACTS / "redoc.png", full_page=False)
        finally:
            await browser.close()
    assert refused == [], refused  # nothing reached the network for another host
    # The only thing refused by the policy: ReDoc's logo (the page drops it on error).
    assert all(why == "csp" for _, why in failed), failed  # blocked by the policy
    assert all(urlsplit(url).hostname == "cdn.redoc.ly" for url, _ in failed), failed
    assert all("Content Security Policy" in e and "redoc" in e for e in errors), errors
    loaded = {urlsplit(u).path for u in requested}
    assert {
        "/docs",
        "/redoc",
        "/openapi.json",
        "/docs-assets/swagger-ui-bundle.js",
        "/docs-assets/swagger-ui.css",
        "/docs-assets/redoc.standalone.js",
    } <= loaded
    assert (ARTIFACTS / "swagger-ui.png").stat().st_size > 10_000
