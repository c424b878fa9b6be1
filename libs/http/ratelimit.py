"""Rate limits per API key and per client address (ADR 0015, ADR 0028): a moving window in
memory, checked before anything else of a request is done (no key lookup, no body read).

A key is identified by a digest of the bearer token as sent, so the check costs no database
round trip; an unknown token gets its own window, and guessing tokens is bounded by the
address's. Limits are per process: with N API replicas a client gets up to N times as much.
The notation (`10/second;600/minute`) is read by `limits`; the window is ours (ADR 0028).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from limits import parse_many
from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass(frozen=True)
class Limit:
    amount: int  # hits allowed in any `seconds`
    seconds: float
    text: str  # as the 429 names it: "600 per 1 minute"


def parse_limits(notation: str) -> list[Limit]:
    """`limits`' notation, e.g. "10/second;600/minute" (a ValueError names what is wrong)."""
    return [Limit(i.amount, float(i.get_expiry()), str(i)) for i in parse_many(notation)]


class MovingWindow:
    """At most `amount` hits in any `seconds` per identity and limit: the times of the hits
    still inside the window, oldest first. A hit costs a few deque operations; `limits`' async
    moving window took 0.55 ms of CPU a request here (a task and a thread hop to expire
    entries on every hit). Identities idle for longer than their window are forgotten in a
    sweep at most once a `sweep_seconds`."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, sweep_seconds: float = 60.0
    ) -> None:
        self._clock = clock
        self._sweep_seconds = sweep_seconds
        self._next_sweep = clock() + sweep_seconds
        self._hits: dict[tuple[Limit, str, str], deque[float]] = {}

    def hit(self, limit: Limit, kind: str, identity: str) -> float:
        """0 when the hit is allowed (and counted); else the seconds until one would be."""
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        window = self._hits.get((limit, kind, identity))
        if window is None:
            window = self._hits[(limit, kind, identity)] = deque()
        start = now - limit.seconds
        while window and window[0] < start:
            window.popleft()
        if len(window) >= limit.amount:
            return window[0] - start
        window.append(now)
        return 0.0

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self._sweep_seconds
        idle = [k for k, w in self._hits.items() if not w or w[-1] < now - k[0].seconds]
        for key in idle:
            del self._hits[key]

    def __len__(self) -> int:
        """Identities (per limit) remembered."""
        return len(self._hits)


class RateLimitMiddleware:
    """429 with `Retry-After` once a key or an address exceeds its limit on `prefix` paths."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        per_key: str,
        per_address: str,
        prefix: str = "/v1",
        window: MovingWindow | None = None,
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.per_key = parse_limits(per_key)
        self.per_address = parse_limits(per_address)
        self.window = window or MovingWindow()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "?"
        checks = [(limit, "address", address) for limit in self.per_address]
        token = _bearer(scope)
        if token:
            digest = hashlib.sha256(token).hexdigest()
            checks += [(limit, "key", digest) for limit in self.per_key]
        for limit, kind, identity in checks:
            wait = self.window.hit(limit, kind, identity)
            if wait > 0:
                retry = max(1, math.ceil(wait))
                await _too_many(send, f"too many requests: {limit.text} per {kind}", retry)
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
