"""Browser sessions: signed in once with an API key, then carried by an HttpOnly cookie.

The cookie holds 256 random bits; only their SHA-256 is stored, as for API keys (a token
that cannot be guessed needs no slow hash). A session is valid while it has not expired
and its key is not revoked, so revoking a key signs out every browser that used it.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from libs.db import Conn
from libs.db.apikeys import ApiKey

TOKEN_PREFIX = "dfs_"  # noqa: S105 - a public prefix, not a secret
TOKEN_LENGTH = len(TOKEN_PREFIX) + 43


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(token: str) -> bool:
    return (
        len(token) == TOKEN_LENGTH
        and token.startswith(TOKEN_PREFIX)
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in token)
    )


async def create_session(conn: Conn, key_id: int, seconds: float) -> tuple[str, datetime]:
    """A new session for the key; returns the token (shown once, to the browser) and expiry.
    Expired sessions are removed on the way, so the table stays as small as the live ones."""
    await conn.execute("DELETE FROM api_sessions WHERE expires_at < now()")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = await conn.fetchval(
        """INSERT INTO api_sessions (token_hash, api_key_id, expires_at)
           VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING expires_at""",
        _hash(token),
        key_id,
        seconds,
    )
    return token, expires


async def session_key(conn: Conn, token: str) -> tuple[ApiKey, datetime] | None:
    """The active key behind a live session, and the session's expiry; None otherwise."""
    if not looks_like_token(token):
        return None
    row = await conn.fetchrow(
        """SELECT k.id, k.name, k.role, k.key_prefix, k.created_at, k.revoked_at,
                  k.last_used_at, s.expires_at
             FROM api_sessions s JOIN api_keys k ON k.id = s.api_key_id
            WHERE s.token_hash = $1 AND s.expires_at > now() AND k.revoked_at IS NULL""",
        _hash(token),
    )
    if row is None:
        return None
    values = dict(row)
    expires = values.pop("expires_at")
    return ApiKey(**values), expires


async def session_key_digest(conn: Conn, token: str) -> str | None:
    """The stored digest of the active key behind a live session (what a bearer request with
    that key is rate limited under); None otherwise."""
    if not looks_like_token(token):
        return None
    found = await conn.fetchval(
        """SELECT k.key_hash FROM api_sessions s JOIN api_keys k ON k.id = s.api_key_id
            WHERE s.token_hash = $1 AND s.expires_at > now() AND k.revoked_at IS NULL""",
        _hash(token),
    )
    return str(found) if found is not None else None


async def end_session(conn: Conn, token: str) -> bool:
    """Sign out: the session stops working at once. False when there was no such session."""
    if not looks_like_token(token):
        return False
    return bool(
        await conn.fetchval(
            "DELETE FROM api_sessions WHERE token_hash = $1 RETURNING true", _hash(token)
        )
    )
