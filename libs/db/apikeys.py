"""API keys: created by an admin, shown once, stored only as a SHA-256 digest.

A key is `dfk_` + 43 URL-safe characters (256 random bits). Such a key cannot be
guessed or brute-forced, so a fast unsalted hash is the right choice here: a slow
password hash (bcrypt, argon2) only protects low-entropy secrets, and would cost
tens of milliseconds on every request. The digest is also what we look the key up
by (a unique index), so no secret is ever compared byte by byte in Python.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from libs.db import Conn

ROLES = ("clinician", "ops", "admin")
KEY_PREFIX = "dfk_"
KEY_LENGTH = len(KEY_PREFIX) + 43  # token_urlsafe(32) is 43 characters
DISPLAY_PREFIX_LENGTH = 8
TOUCH_SECONDS = 60.0  # last_used_at is written at most once a minute per key

_COLUMNS = "id, name, role, key_prefix, created_at, revoked_at, last_used_at"


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    role: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def new_plaintext() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def looks_like_key(plaintext: str) -> bool:
    """Cheap shape check, so garbage never reaches the database."""
    return (
        len(plaintext) == KEY_LENGTH
        and plaintext.startswith(KEY_PREFIX)
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in plaintext)
    )


async def create_key(conn: Conn, role: str, name: str = "") -> tuple[int, str]:
    """Create a key; returns its id and the plaintext, which is never stored nor shown again."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    plaintext = new_plaintext()
    key_id = await conn.fetchval(
        """INSERT INTO api_keys (name, role, key_prefix, key_hash)
           VALUES ($1, $2, $3, $4) RETURNING id""",
        name,
        role,
        plaintext[:DISPLAY_PREFIX_LENGTH],
        hash_key(plaintext),
    )
    return int(key_id), plaintext


async def verify_key(conn: Conn, plaintext: str) -> ApiKey | None:
    """The active key with this plaintext, or None (unknown, malformed or revoked)."""
    if not looks_like_key(plaintext):
        return None
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, last_used_at IS NULL OR last_used_at < now() - make_interval("
        f"secs => $2) AS stale FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        hash_key(plaintext),
        TOUCH_SECONDS,
    )
    if row is None:
        return None
    values = dict(row)
    if values.pop("stale"):
        # Conditional, so concurrent requests of one key write once, not once each.
        touched = await conn.fetchval(
            """UPDATE api_keys SET last_used_at = now()
                WHERE id = $1 AND (last_used_at IS NULL
                                   OR last_used_at < now() - make_interval(secs => $2))
            RETURNING last_used_at""",
            values["id"],
            TOUCH_SECONDS,
        )
        values["last_used_at"] = touched or values["last_used_at"]
    return ApiKey(**values)


async def revoke_key(conn: Conn, key_id: int) -> bool:
    """Revoke a key; False when there is no such active key."""
    return bool(
        await conn.fetchval(
            """UPDATE api_keys SET revoked_at = now()
                WHERE id = $1 AND revoked_at IS NULL RETURNING true""",
            key_id,
        )
    )


async def get_key(conn: Conn, key_id: int) -> ApiKey | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
    return ApiKey(**dict(row)) if row else None


async def list_keys(conn: Conn) -> list[ApiKey]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY id")
    return [ApiKey(**dict(r)) for r in rows]
