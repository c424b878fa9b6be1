"""The audit log: who searched, read or changed what, through the API, with what outcome."""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass, field
from typing import Any

from libs.db import Conn


@dataclass(frozen=True)
class AuditEntry:
    action: str  # e.g. study.search, study.read, import.create, apikey.create
    method: str
    path: str
    status_code: int
    api_key_id: int | None = None  # None when the caller was not authenticated
    role: str | None = None
    query: dict[str, Any] = field(default_factory=dict)
    result_count: int | None = None
    client: str | None = None


async def write_audit(conn: Conn, entry: AuditEntry) -> None:
    await conn.execute(
        """INSERT INTO audit_log (api_key_id, role, action, method, path, query, status_code,
                                  result_count, client)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        entry.api_key_id,
        entry.role,
        entry.action,
        entry.method,
        entry.path,
        entry.query,
        entry.status_code,
        entry.result_count,
        entry.client,
    )


async def create_key_audited(conn: Conn, role: str, name: str, *, via: str) -> tuple[int, str]:
    """`apikeys.create_key` outside the API (the CLI, `dicomflow up`), with its audit row in
    the same transaction: who ran it on which host, never the key itself."""
    from libs.db.apikeys import create_key

    async with conn.transaction():
        key_id, plaintext = await create_key(conn, role, name)
        await write_audit(
            conn,
            AuditEntry(
                action="apikey.create",
                method="CLI",
                path=via,
                status_code=201,
                query={"key_id": key_id, "role": role, "name": name},
                client=f"cli:{_user()}@{socket.gethostname()}",
            ),
        )
    return key_id, plaintext


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return "?"
