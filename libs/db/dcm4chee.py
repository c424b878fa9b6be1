"""dcm4chee watcher state: the watermark per archive and the instances taken from it.

Everything a round decides is written in one transaction with the watermark, so a restart
neither misses nor repeats a study.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from libs.db import Conn, ledger, tasks
from libs.db.ledger import LedgerRow, NewFile

STAGE = "dcm4chee-watcher"
SOURCE = "dcm4chee"


@dataclass(frozen=True, order=True)
class Watermark:
    """The last study handled: its change time on the archive's clock, then its key."""

    changed_at: datetime
    study_pk: int


START = Watermark(datetime(1970, 1, 1), 0)


@dataclass(frozen=True)
class FoundFile:
    """An archive instance for the pipeline: a reachable file (`reason` None) or not; one
    not reachable is fetched by C-MOVE when `retrieve` (its ledger row then stays pending)."""

    study_uid: str
    sop_instance_uid: str
    uri: str
    origin: str
    size: int
    reason: str | None = None
    retrieve: bool = False
    series_uid: str = ""
    series_size: int = 0  # instances of its series / study in the archive (C-MOVE level)
    study_size: int = 0


async def watermark(conn: Conn, source: str) -> Watermark:
    row = await conn.fetchrow(
        "SELECT changed_at, study_pk FROM dcm4chee_watermarks WHERE source = $1", source
    )
    return Watermark(row["changed_at"], row["study_pk"]) if row else START


async def advance(conn: Conn, source: str, to: Watermark, studies: int) -> None:
    """Move the watermark forward (never back)."""
    await conn.execute(
        """INSERT INTO dcm4chee_watermarks (source, changed_at, study_pk, studies)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (source) DO UPDATE
              SET changed_at = EXCLUDED.changed_at, study_pk = EXCLUDED.study_pk,
                  studies = dcm4chee_watermarks.studies + EXCLUDED.studies, updated_at = now()
            WHERE (dcm4chee_watermarks.changed_at, dcm4chee_watermarks.study_pk)
                  < (EXCLUDED.changed_at, EXCLUDED.study_pk)""",
        source,
        to.changed_at,
        to.study_pk,
        studies,
    )


async def emitted(conn: Conn, source: str, study_uids: Sequence[str]) -> set[str]:
    """SOPInstanceUIDs of these studies already handed to the pipeline (their file read, or
    being fetched by C-MOVE, or fetched): all but the unreachable ones."""
    rows = await conn.fetch(
        """SELECT sop_instance_uid FROM dcm4chee_instances
            WHERE source = $1 AND study_uid = ANY($2::text[]) AND status <> 'unreachable'""",
        source,
        list(study_uids),
    )
    return {r["sop_instance_uid"] for r in rows}


async def record_round(
    conn: Conn,
    source: str,
    files: Sequence[FoundFile],
    to: Watermark,
    studies: int,
    study_uids: Sequence[str] = (),
) -> list[LedgerRow]:
    """One transaction: an import task holding the round's files (unreachable ones recorded
    as failed with their reason), the instances taken, the studies seen, and the watermark.
    Returns the ledger rows to publish; a lost publish is re-emitted by the reconciler."""
    async with conn.transaction():
        rows: list[LedgerRow] = []
        if files:
            rows = await _task_with_files(conn, source, files)
        await record_studies(conn, source, study_uids)
        await advance(conn, source, to, studies)
    return rows


async def record_studies(conn: Conn, source: str, study_uids: Sequence[str]) -> None:
    """Studies the archive has now: remembered for the deletion check; one found gone
    before and seen again is no longer marked deleted (in our index either)."""
    if not study_uids:
        return
    await conn.execute(
        """INSERT INTO dcm4chee_studies (source, study_uid)
           SELECT $1, u FROM unnest($2::text[]) AS u ORDER BY u
           ON CONFLICT (source, study_uid) DO UPDATE
              SET seen_at = now(), checked_at = now(), gone_at = NULL""",
        source,
        sorted(set(study_uids)),
    )
    await conn.execute(
        """UPDATE studies SET source_deleted_at = NULL, source_deleted_from = NULL
            WHERE study_uid = ANY($1::text[]) AND source_deleted_from = $2""",
        list(study_uids),
        source,
    )


async def studies_to_check(conn: Conn, source: str, limit: int) -> list[str]:
    """The studies taken from this archive checked longest ago (not already found gone)."""
    rows = await conn.fetch(
        """SELECT study_uid FROM dcm4chee_studies WHERE source = $1 AND gone_at IS NULL
            ORDER BY checked_at, study_uid LIMIT $2""",
        source,
        limit,
    )
    return [r["study_uid"] for r in rows]


async def record_check(
    conn: Conn, source: str, present: Sequence[str], gone: Sequence[str]
) -> list[str]:
    """The archive still has `present`, no longer has `gone`: those are marked deleted at
    the source in our index (nothing of ours is removed). Returns the ones newly marked."""
    async with conn.transaction():
        await conn.execute(
            """UPDATE dcm4chee_studies SET checked_at = now()
                WHERE source = $1 AND study_uid = ANY($2::text[])""",
            source,
            list(present),
        )
        rows = await conn.fetch(
            """UPDATE dcm4chee_studies SET checked_at = now(), gone_at = now()
                WHERE source = $1 AND study_uid = ANY($2::text[]) AND gone_at IS NULL
            RETURNING study_uid""",
            source,
            list(gone),
        )
        newly = sorted(r["study_uid"] for r in rows)
        await conn.execute(
            """UPDATE studies SET source_deleted_at = now(), source_deleted_from = $2
                WHERE study_uid = ANY($1::text[]) AND source_deleted_at IS NULL""",
            newly,
            source,
        )
    return newly


async def _task_with_files(conn: Conn, source: str, files: Sequence[FoundFile]) -> list[LedgerRow]:
    task = await tasks.create_task(
        conn,
        source_path=f"dcm4chee:{source}",
        description=f"dcm4chee archive {source!r}: {len(files)} instances",
        kind="dcm4chee",
    )
    # Running and fully scanned from the start: no folder scanner ever leases it, and it
    # completes when its last file reaches an outcome.
    await conn.execute(
        """UPDATE import_tasks SET status = 'running', scan_completed = true,
                  started_at = now(), updated_at = now() WHERE id = $1""",
        task.id,
    )
    rows = await ledger.record_discovered(
        conn,
        [
            NewFile(SOURCE, f.uri, f.origin, f.size, uuid.uuid4().hex, task_id=task.id)
            for f in files
        ],
    )
    by_uri = {r.uri: r for r in rows}
    failures = [
        (by_uri[f.uri].id, f.reason) for f in files if f.reason is not None and not f.retrieve
    ]
    if failures:
        await ledger.mark_failed_many(conn, failures, stage=STAGE, task_id=task.id)
    await conn.execute(
        """INSERT INTO dcm4chee_instances (source, sop_instance_uid, study_uid, status, reason,
                                           file_id, series_uid, series_size, study_size,
                                           next_attempt_at)
           SELECT $1, u.sop, u.study, u.status, u.reason, u.file_id, u.series, u.series_size,
                  u.study_size, now()
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                         $7::text[], $8::int[], $9::int[])
                  AS u(sop, study, status, reason, file_id, series, series_size, study_size)
           ON CONFLICT (source, sop_instance_uid) DO UPDATE
              SET status = EXCLUDED.status, reason = EXCLUDED.reason,
                  file_id = EXCLUDED.file_id, series_uid = EXCLUDED.series_uid,
                  series_size = EXCLUDED.series_size, study_size = EXCLUDED.study_size,
                  attempts = 0, next_attempt_at = now(), moved_at = NULL, last_error = NULL,
                  seen_at = now()""",
        source,
        [f.sop_instance_uid for f in files],
        [f.study_uid for f in files],
        [_status(f) for f in files],
        [f.reason for f in files],
        [by_uri[f.uri].id for f in files],
        [f.series_uid for f in files],
        [f.series_size for f in files],
        [f.study_size for f in files],
    )
    await ledger.complete_task_if_done(conn, task.id)
    return [by_uri[f.uri] for f in files if f.reason is None]


def _status(f: FoundFile) -> str:
    if f.reason is None:
        return "emitted"
    return "retrieving" if f.retrieve else "unreachable"
