"""The audit log: who searched, read or changed what, through the API, with what outcome."""

from __future__ import annotations

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
