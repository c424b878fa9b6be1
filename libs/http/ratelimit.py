"""Rate limits per API key and per client address (ADR 0015): `limits`' moving window, in
memory, checked before anything else of a request is done (no key lookup, no body read).

A key is identified by a digest of the bearer token as sent, so the check costs no database
round trip; an unknown token gets its own window, and guessing tokens is bounded by the
address's. Limits are per process: with N API replicas a client gets up to N times as much.
"""

from __future__ import annotations

import hashlib
import json
import math
import time

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send


class RateLimitMiddleware:
    """429 with `Retry-After` once a key or an address exceeds its limit on `prefix` paths."""

    def __init__(
        self, app: ASGIApp, *, per_key: str, per_address: str, prefix: str = "/v1"
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.per_key: list[RateLimitItem] = parse_many(per_key)  # e.g. "10/second;600/minute"
        self.per_address: list[RateLimitItem] = parse_many(per_address)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "?"
        checks = [(item, "address", address) for item in self.per_address]
        token = _bearer(scope)
        if token:
            digest = hashlib.sha256(token).hexdigest()
            checks += [(item, "key", digest) for item in self.per_key]
        for item, kind, identity in checks:
            if not await self.limiter.hit(item, kind, identity):
                stats = await self.limiter.get_window_stats(item, kind, identity)
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                await _too_many(send, f"too many requests: {item} per {kind}", retry)
                return
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> bytes:
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return bytes(value[7:].strip())
    return b""


async def _too_many(send: Send, detail: str, retry_after: int) -> None:
    body = json.dumps({"detail": f"{detail}; retry in {retry_after} s"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})
