"""A streaming reverse proxy for one upstream service, for routes the API serves on behalf of
another service (the packager's archive downloads).

What passes: the method (GET or HEAD), the query, the caller's `Authorization` and the
conditional and range headers (`Range`, `If-Range`, `If-None-Match`, `If-Modified-Since`);
back come the upstream's status (200, 206, 304, 401, 403, 404, 416 ...) and its end-to-end
headers (ETag, Last-Modified, Accept-Ranges, Content-Range, Content-Length,
Content-Disposition ...). The caller's address goes along in `X-Forwarded-For`, so the
upstream's audit log names the client, not the proxy.

Memory stays constant: the body is relayed piece by piece as it arrives (httpcore's 64 KiB
reads, passed on without re-chunking: joining them into 1 MiB pieces halved the rate in
`make bench`); a slow client slows the upstream read through the ASGI server's flow control.
When the client goes away the upstream response is closed (the upstream sees the disconnect
too). An upstream that is down is a 503, one that does not answer in time a 504, both with a
JSON detail; one that fails once the body has started ends the transfer early (the client
sees a short or unterminated body, never a wrong byte).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from libs.http.auth import SESSION_COOKIE
from libs.http.tls import tls_verify
from libs.runtime.logging import get_logger

log = get_logger(__name__)
REQUEST_HEADERS = (
    "authorization",
    "range",
    "if-range",
    "if-none-match",
    "if-modified-since",
    "user-agent",
)
# Hop-by-hop (RFC 9110 7.6.1) or re-done by our own server; everything else is relayed.
DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "server",
        "date",
    }
)


@dataclass(frozen=True)
class ProxyTimeouts:
    connect: float = 5.0
    # A ZIP or a Range on an archive not cached yet answers once the build is finished.
    read: float = 600.0


def upstream_client(
    base_url: str, timeouts: ProxyTimeouts, ca_bundle: Path | None = None
) -> httpx.AsyncClient:
    """One pooled client per upstream; no automatic decompression or redirects. An https://
    upstream is verified against `ca_bundle` (a private CA's PEM file), else the system's CAs."""
    return httpx.AsyncClient(
        verify=tls_verify(ca_bundle),
        base_url=base_url.rstrip("/"),
        timeout=httpx.Timeout(timeouts.read, connect=timeouts.connect),
        follow_redirects=False,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
        trust_env=False,  # the upstream is ours: never through an HTTP(S)_PROXY
    )


def _request_headers(request: Request) -> dict[str, str]:
    headers = {k: v for k in REQUEST_HEADERS if (v := request.headers.get(k)) is not None}
    # Only the address this server settled on (its own uvicorn already honoured a trusted
    # proxy in front of it): a caller's X-Forwarded-For is never passed on, so it cannot put
    # another address in the upstream's audit log.
    if request.client:
        headers["x-forwarded-for"] = request.client.host
    # A signed-in browser carries its session cookie instead of a key: pass that cookie alone
    # (the upstream checks it against the same sessions table), never the page's others.
    session = request.cookies.get(SESSION_COOKIE)
    if session and "authorization" not in headers:
        headers["cookie"] = f"{SESSION_COOKIE}={session}"
    headers["accept-encoding"] = "identity"  # archives are compressed already; bytes as is
    return headers


def _response_headers(upstream: httpx.Response) -> list[tuple[bytes, bytes]]:
    return [
        (k, v)
        for k, v in upstream.headers.raw
        if k.decode("latin-1").lower() not in DROPPED_RESPONSE_HEADERS
    ]


class RelayedResponse(StreamingResponse):
    """The upstream's body with exactly the upstream's headers (Starlette would add a charset
    to the Content-Type); the upstream response is closed however the relay ends (finished,
    client gone, upstream failed)."""

    def __init__(self, upstream: httpx.Response, path: str) -> None:
        super().__init__(_relay(upstream, path), status_code=upstream.status_code)
        self.raw_headers = _response_headers(upstream)
        self._upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._upstream.aclose()


async def _relay(upstream: httpx.Response, path: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        # Headers are sent: all we can do is end the transfer early. The client sees a short
        # body (Content-Length) or a chunked stream without its end: never a wrong byte.
        log.warning("upstream failed mid-response", path=path, error=repr(exc))
        raise


async def forward(client: httpx.AsyncClient, request: Request, upstream_path: str) -> Response:
    """Relays `request` (GET or HEAD) to `upstream_path` of `client`'s base URL."""
    outgoing = client.build_request(
        request.method,
        upstream_path,
        params=str(request.query_params),
        headers=_request_headers(request),
    )
    try:
        upstream = await client.send(outgoing, stream=True)
    except httpx.TimeoutException as exc:
        log.warning("upstream timed out", path=upstream_path, error=repr(exc))
        return JSONResponse({"detail": "archive service did not answer in time"}, 504)
    except httpx.HTTPError as exc:
        log.warning("upstream unreachable", path=upstream_path, error=repr(exc))
        return JSONResponse({"detail": "archive service unavailable"}, 503)
    if request.method == "HEAD" or upstream.status_code in (204, 304):
        await upstream.aclose()
        response = Response(status_code=upstream.status_code)
        response.raw_headers = _response_headers(upstream)
        return response
    return RelayedResponse(upstream, upstream_path)
