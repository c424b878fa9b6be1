"""The container's health probe (`python -m libs.tools.healthcheck`, the Dockerfile's and
docker-compose's HEALTHCHECK), run as Docker runs it, against a service's real ops server:
healthy over plain HTTP and over HTTPS (a service given HTTPS_CERTFILE serves TLS only, where
the old `http://` probe failed every time), unhealthy with one line when nothing listens."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from libs.contracts.settings import HttpTls
from libs.runtime.probes import Readiness, http_server, ops_app
from libs.tools.dev_broker import free_port
from tests.certs import Pki, make_pki
from tests.polling import eventually


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def probe(port: int, *args: str) -> tuple[int, str]:
    """The HEALTHCHECK command, in a process of its own (exit code, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "libs.tools.healthcheck", *args,
        env={"OPS_PORT_FOR_HEALTHCHECK": str(port), "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.fixture(params=["http", "https"])
async def ops_port(request: pytest.FixtureRequest, pki: Pki) -> AsyncIterator[int]:
    """A service's ops server (/health /ready /metrics) as `Runtime` serves it."""
    tls = HttpTls(pki.server_cert, pki.server_key) if request.param == "https" else None
    port = free_port()
    server = http_server(
        ops_app("extractor", Readiness(), CollectorRegistry()), "127.0.0.1", port, tls
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or task.done(), 20)
    yield port
    server.should_exit = True
    await task


async def test_the_probe_finds_the_service_healthy_over_http_and_https(ops_port: int) -> None:
    assert await probe(ops_port) == (0, "")


async def test_the_probe_fails_with_one_line_when_nothing_listens() -> None:
    code, err = await probe(free_port())
    assert code == 1
    assert err.count("\n") == 1 and "Connection refused" in err, err


async def test_the_probe_fails_with_one_line_on_a_reply_that_is_not_a_health_answer() -> None:
    """Something on the port that answers in broken HTTP (a header line past http.client's
    limit): unhealthy, said in one line, not a traceback."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        code, err = await probe(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
    assert code == 1
    assert err.count("\n") == 1 and "LineTooLong" in err and "Traceback" not in err, err


async def test_the_probe_answers_within_its_time_limit_whatever_the_server_does() -> None:
    """A server that sends its reply a byte every 0.2 s keeps each socket operation within
    the socket timeout; the probe still answers (unhealthy) at its time limit."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        started = time.monotonic()
        code, err = await probe(server.sockets[0].getsockname()[1], "--timeout", "2")
        took = time.monotonic() - started
    finally:
        server.close()
    assert code == 1
    assert err.count("\n") == 1 and "no answer within 2 s" in err, err
    assert took < 10, took  # the time limit and a process's start, not the 40 s reply
