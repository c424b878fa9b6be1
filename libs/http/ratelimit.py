"""Rate limits per API key and per client address (ADR 0015, ADR 0028): a moving window in
memory, checked before anything else of a request is done (no key lookup, no body read).

A key is identified by a digest of the bearer token as sent (the SHA-256 the key is stored
under), so the check costs no database round trip; an unknown token gets its own window, and
guessing tokens is bounded by the address's. A browser signed in with a session cookie is
counted against its session's key (the same window as that key's bearer requests): the
session's key digest is looked up once and remembered for `SessionKeys.ttl_seconds`; the
address is checked first, so a flood of made-up cookies costs no lookups beyond its limit.
Limits are per process: with N API replicas a client gets up to N times as much.
The notation (`10/second;600/minute`) is read by `limits`; the window is ours (ADR 0028).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from limits import parse_many
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

SessionLookup = Callable[[str], Awaitable[str | None]]  # session token -> its key's digest


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


class SessionKeys:
    """Session token -> the digest of its key, looked up once and remembered `ttl_seconds`
    (at most `max_entries`, the oldest forgotten first). A token that names no live session
    is remembered as such too, so it is not looked up again on every request."""

    def __init__(
        self,
        lookup: SessionLookup,
        *,
        ttl_seconds: float = 60.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self.ttl_seconds = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._known: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    async def digest(self, token: str) -> str | None:
        now = self._clock()
        hit = self._known.get(token)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = await self._lookup(token)
        self._known[token] = (now + self.ttl_seconds, found)
        self._known.move_to_end(token)
        while len(self._known) > self._max:
            self._known.popitem(last=False)
        return found


class RateLimitMiddleware:
    """429 with `Retry-After` once a key or an address exceeds its limit on paths under one
    of `prefixes`. `sessions` (with `cookie`, the session cookie's name) counts a signed-in
    browser against its session's key; without it, such a browser is limited per address
    only."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        per_key: str,
        per_address: str,
        prefixes: tuple[str, ...] = ("/v1",),
        sessions: SessionKeys | None = None,
        cookie: str = "",
        window: MovingWindow | None = None,
    ) -> None:
        self.app = app
        self.prefixes = prefixes
        self.per_key = parse_limits(per_key)
        self.per_address = parse_limits(per_address)
        self.sessions = sessions
        self.cookie = cookie
        self.window = window or MovingWindow()

    def _limited(self, path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._limited(scope["path"]):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "?"
        if await self._refused(send, self.per_address, "address", address):
            return
        key = await self._key(scope)
        if key is not None and await self._refused(send, self.per_key, "key", key):
            return
        await self.app(scope, receive, send)

    async def _refused(self, send: Send, limits: list[Limit], kind: str, identity: str) -> bool:
        for limit in limits:
            wait = self.window.hit(limit, kind, identity)
            if wait > 0:
                retry = max(1, math.ceil(wait))
                await _too_many(send, f"too many requests: {limit.text} per {kind}", retry)
                return True
        return False

    async def _key(self, scope: Scope) -> str | None:
        """The caller's key identity: the digest of its bearer token, else of its session's
        key (an unknown session: the digest of the cookie itself, a window of its own)."""
        headers = dict(scope.get("headers", ()))
        authorization = headers.get(b"authorization", b"")
        if authorization[:7].lower() == b"bearer " and authorization[7:].strip():
            return hashlib.sha256(authorization[7:].strip()).hexdigest()
        if self.sessions is None or b"cookie" not in headers:
            return None
        token = cookie_parser(headers[b"cookie"].decode("latin-1")).get(self.cookie)
        if not token:
            return None
        found = await self.sessions.digest(token)
        return found or "session:" + hashlib.sha256(token.encode()).hexdigest()


async def _too_many(send: Send, detail: str, retry_after: int) -> None:
    body = json.dumps({"detail": f"{detail}; retry in {retry_after} s"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})
