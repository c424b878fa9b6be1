"""ISO watcher state: each disc in the inbox and its import task, until it is moved out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from libs.db import Conn, tasks

DISC_KINDS = ("iso", "disc-folder")


@dataclass(frozen=True)
class OpenDisc:
    task_id: str
    source_path: str
    task_status: str
    task_error: str | None
    scan_completed: bool
    scan: dict[str, Any]
    moved_to: str | None


async def open_discs(conn: Conn) -> list[OpenDisc]:
    """Discs not moved out of the inbox yet, oldest first."""
    rows = await conn.fetch(
        """SELECT d.task_id::text AS task_id, d.source_path, t.status AS task_status,
                  t.error AS task_error, t.scan_completed, d.scan, d.moved_to
             FROM iso_discs d JOIN import_tasks t ON t.id = d.task_id
            WHERE d.finalized_at IS NULL ORDER BY d.created_at"""
    )
    return [OpenDisc(**dict(r)) for r in rows]


async def create_disc(conn: Conn, source_path: str, kind: str) -> str | None:
    """An import task for a disc that has none open yet; None when it already has one."""
    async with conn.transaction():
        if await conn.fetchval(
            "SELECT 1 FROM iso_discs WHERE source_path = $1 AND finalized_at IS NULL", source_path
        ):
            return None
        task = await tasks.create_task(
            conn, source_path=source_path, description="disc in the ISO inbox", kind=kind
        )
        await tasks.start_task(conn, task.id)
        await conn.execute(
            "INSERT INTO iso_discs (task_id, source_path) VALUES ($1, $2)", task.id, source_path
        )
    return task.id


async def save_scan(conn: Conn, task_id: str, scan: dict[str, Any]) -> None:
    await conn.execute("UPDATE iso_discs SET scan = $2 WHERE task_id = $1", task_id, scan)


async def plan_move(conn: Conn, task_id: str, moved_to: str) -> None:
    """Where the disc goes, recorded before it is moved (a crash mid-way resumes there)."""
    await conn.execute("UPDATE iso_discs SET moved_to = $2 WHERE task_id = $1", task_id, moved_to)


async def finalize(conn: Conn, task_id: str) -> None:
    await conn.execute("UPDATE iso_discs SET finalized_at = now() WHERE task_id = $1", task_id)
