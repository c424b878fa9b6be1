"""What our httpx clients cost per request beyond the request itself: no log line per
request at INFO (ours are per batch), and no failed import per lock (ADR 0035)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys

import httpx
import structlog

from libs.runtime.logging import configure_logging


def test_httpx_requests_are_not_logged_one_line_each_at_info() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("test-service", "INFO")
    try:
        seen: list[logging.LogRecord] = []
        catch = logging.Handler()
        catch.emit = seen.append  # type: ignore[method-assign]
        root.addHandler(catch)

        def answer(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, content=b"ok")

        with httpx.Client(transport=httpx.MockTransport(answer)) as client:
            assert client.get("http://orthanc.invalid/instances/x/file").status_code == 200
        logging.getLogger("httpx").warning("a failure still shows")
        assert [r.getMessage() for r in seen if r.name.startswith("http")] == [
            "a failure still shows"
        ]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        for name in ("httpx", "httpcore", "aiokafka", "kafka", "uvicorn.access"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()


def test_httpcore_finds_sniffio_instead_of_searching_for_it_per_lock() -> None:
    """httpcore imports sniffio inside every lock and event it makes; without it each import
    fails after a search of sys.path (40 us; ~0.2 ms per request)."""
    from httpcore._synchronization import current_async_library

    assert importlib.util.find_spec("sniffio") is not None, "sniffio is a dependency (ADR 0035)"

    async def detect() -> str:
        return current_async_library()

    assert asyncio.run(detect()) == "asyncio"
    assert "sniffio" in sys.modules, "found once, then taken from sys.modules, not searched"
