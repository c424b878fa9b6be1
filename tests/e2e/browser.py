"""Debian's Chromium driven by Playwright (never `playwright install`), with every problem a
person would see recorded: console errors, uncaught exceptions, failed requests, error
responses, and any attempt to reach a host other than 127.0.0.1 (such requests are
aborted: the pages must work on a network without internet)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.async_api import (
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    Response,
    Route,
    async_playwright,
    expect,
)

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 60_000
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
RouteHandler = Callable[[Route, Request], Awaitable[bool]]


@dataclass
class Browser:
    context: BrowserContext
    page: Page
    problems: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    expected_statuses: set[int] = field(default_factory=set)

    def watch(self, page: Page) -> None:
        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.problems.append(f"console: {message.text}")

        def failed(request: Request) -> None:
            self.problems.append(f"failed: {request.method} {request.url} {request.failure}")

        def answered(response: Response) -> None:
            if response.status >= 400 and response.status not in self.expected_statuses:
                self.problems.append(f"status {response.status}: {response.url}")

        page.on("console", console)
        page.on("pageerror", lambda error: self.problems.append(f"exception: {error}"))
        page.on("requestfailed", failed)
        page.on("response", answered)


@asynccontextmanager
async def chromium(
    profile: Path, extra_route: RouteHandler | None = None
) -> AsyncIterator[Browser]:
    """A fresh profile in `profile`; `extra_route(route, request)` may answer a local request
    itself (returns True when it did)."""
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            locale="en-GB",
            timezone_id="Europe/Moscow",
            viewport={"width": 1360, "height": 960},
            accept_downloads=True,
        )
        # Previews are rendered on the fly on a machine that may be busy: wait for what a
        # person would wait for, not Playwright's 5 s.
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        page = context.pages[0] if context.pages else await context.new_page()
        browser = Browser(context, page)

        async def gate(route: Route, request: Request) -> None:
            if urlsplit(request.url).hostname != "127.0.0.1" and not request.url.startswith(
                ("blob:", "data:")
            ):
                browser.elsewhere.append(request.url)
                await route.abort("blockedbyclient")
                return
            if extra_route is not None and await extra_route(route, request):
                return
            await route.continue_()

        await context.route("**/*", gate)
        browser.watch(page)
        try:
            yield browser
        finally:
            await context.close()
