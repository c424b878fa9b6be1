"""`dicomflow rebuild-index` runs: the checkpoint, counters and failures of a rebuild, and the
indexing of one stored object through the pipeline's own writes (ledger, dedup claim, index).

The checkpoint lives in the database being rebuilt and moves in the same transaction as the
index writes it covers: a run stopped at any moment resumes right after the last committed
key, with nothing indexed twice and nothing missed. A file beside the CLI could disagree with
the database after a crash (written before or after the commit), and it would outlive a
database that is dropped again, whose checkpoint is then meaningless.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg

from libs.contracts.events import DicomHeader, Hashes, stored_object_event
from libs.db import Conn, dedup, index, index_batch, ledger

SOURCE = "rebuild"
Outcome = Literal["indexed", "already_indexed", "conflict", "failed"]


@dataclass(frozen=True)
class Run:
    id: int
    storage_url: str
    checkpoint: str
    resumed: bool


@dataclass
class Tally:
    """What one batch (or a whole run) came to."""

    indexed: int = 0
    already_indexed: int = 0
    conflicts: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)

    @property
    def done(self) -> int:
        return (
            self.indexed
            + self.already_indexed
            + self.conflicts
            + sum(self.skipped.values())
            + len(self.failures)
        )

    def count(self, outcome: Outcome) -> None:
        if outcome == "indexed":
            self.indexed += 1
        elif outcome == "already_indexed":
            self.already_indexed += 1
        elif outcome == "conflict":
            self.conflicts += 1


async def start_run(conn: Conn, storage_url: str, *, fresh: bool) -> Run:
    """The unfinished run of this store (resumed), or a new one; `fresh` abandons it."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT id, checkpoint FROM rebuild_runs WHERE storage_url = $1 AND status = 'running'"
            " FOR UPDATE",
            storage_url,
        )
        if row is not None and not fresh:
            return Run(row["id"], storage_url, row["checkpoint"], resumed=True)
        if row is not None:
            await conn.execute(
                "UPDATE rebuild_runs SET status = 'abandoned', finished_at = now() WHERE id = $1",
                row["id"],
            )
        run_id = await conn.fetchval(
            "INSERT INTO rebuild_runs (storage_url) VALUES ($1) RETURNING id", storage_url
        )
        return Run(int(run_id), storage_url, "", resumed=False)


async def index_object(
    conn: Conn,
    run_id: int,
    *,
    url: str,
    key: str,
    size: int,
    header: DicomHeader,
    hashes: Hashes,
    conflict: bool,
) -> Outcome:
    """Index one stored object as the pipeline would have: a ledger row (source `rebuild`),
    the dedup claim (so later copies are recognised as duplicates), then the indexer's own
    `index_instance`. A conflicting copy (kept under `conflicts/`) is recorded as a conflict
    and claims nothing. Call inside the batch's transaction."""
    async with conn.transaction():  # a savepoint: a failure here loses this object only
        (row,) = await ledger.record_discovered(
            conn, [ledger.NewFile(SOURCE, url, key, size, f"rebuild-{run_id}")]
        )
        disposition: Literal["new", "same_content_other_uid", "conflict"] = "conflict"
        related = None
        sop = header.instance.sop_instance_uid
        if not conflict:
            (claim,) = await dedup.claim_many(
                conn,
                [
                    dedup.ClaimRequest(
                        sop, hashes.content_sha256, row.id, header_sha256=header.indexed_digest()
                    )
                ],
            )
            if claim.verdict == "conflict":
                raise IndexConflict(
                    "the index already holds this SOPInstanceUID with other content; the "
                    "stored copy was left unindexed"
                )
            if claim.verdict == "same_content_other_uid":
                disposition, related = "same_content_other_uid", claim.related_sop_instance_uid
            else:  # new, or claimed before by another ledger row (a second rebuild)
                disposition = "new"
        known = await conn.fetchval("SELECT 1 FROM instances WHERE sop_instance_uid = $1", sop)
        event = stored_object_event(
            row,
            header=header,
            hashes=hashes,
            disposition=disposition,
            related_sop_instance_uid=related,
        )
        await index.index_instance(conn, event)
    if conflict:
        return "conflict"
    return "already_indexed" if known else "indexed"


async def index_revision(
    conn: Conn, run_id: int, *, url: str, key: str, size: int, header: DicomHeader, hashes: Hashes
) -> Outcome:
    """A header correction kept under `revisions/` (ADR 0025) indexed as the pipeline did: a
    ledger row, its revision claim (so a later copy of it is a duplicate), then the indexer's
    own `apply_revisions`, which makes it the instance's served revision. The original must be
    indexed first (the caller indexes its canonical copy before). Call inside the batch's
    transaction."""
    async with conn.transaction():  # a savepoint: a failure here loses this object only
        (row,) = await ledger.record_discovered(
            conn, [ledger.NewFile(SOURCE, url, key, size, f"rebuild-{run_id}")]
        )
        sop = header.instance.sop_instance_uid
        (claim,) = await dedup.claim_many(
            conn,
            [
                dedup.ClaimRequest(
                    sop, hashes.content_sha256, row.id, header_sha256=header.indexed_digest()
                )
            ],
        )
        if claim.verdict == "conflict":
            raise IndexConflict("the correction's pixels differ from the indexed instance's")
        known = await conn.fetchval(
            "SELECT 1 FROM instance_revisions WHERE sop_instance_uid = $1 AND file_sha256 = $2",
            sop,
            hashes.file_sha256,
        )
        if known or claim.verdict != "revision":  # rebuilt before, or the original's header
            return "already_indexed"
        event = stored_object_event(row, header=header, hashes=hashes, disposition="revision")
        if await index_batch.apply_revisions(conn, [event]):
            raise IndexConflict("the corrected instance's original is not indexed")
    return "indexed"


class IndexConflict(Exception):
    """The stored copy disagrees with what the index already claims for its UID."""


async def save_batch(conn: Conn, run_id: int, tally: Tally, checkpoint: str) -> None:
    """Counters and checkpoint after a batch; in the batch's transaction."""
    if tally.failures:
        await conn.executemany(
            """INSERT INTO rebuild_failures (run_id, key, reason) VALUES ($1, $2, $3)
               ON CONFLICT (run_id, key) DO UPDATE SET reason = EXCLUDED.reason""",
            [(run_id, k, r) for k, r in tally.failures],
        )
    skipped = await conn.fetchval("SELECT skipped FROM rebuild_runs WHERE id = $1", run_id)
    merged = Counter(_jsonb(skipped)) + tally.skipped
    await conn.execute(
        """UPDATE rebuild_runs
              SET checkpoint = $2, indexed = indexed + $3, already_indexed = already_indexed + $4,
                  conflicts = conflicts + $5, skipped = $6::jsonb, failed = failed + $7,
                  updated_at = now()
            WHERE id = $1""",
        run_id,
        checkpoint,
        tally.indexed,
        tally.already_indexed,
        tally.conflicts,
        json.dumps(dict(merged)),
        len(tally.failures),
    )


def _jsonb(value: Any) -> dict[str, int]:
    return json.loads(value) if isinstance(value, str) else dict(value or {})


async def finish_run(conn: Conn, run_id: int) -> None:
    await conn.execute(
        "UPDATE rebuild_runs SET status = 'completed', finished_at = now(), updated_at = now()"
        " WHERE id = $1",
        run_id,
    )


async def run_totals(conn: Conn, run_id: int) -> tuple[Tally, int]:
    """The whole run's counters (every session of it) and its number of failures."""
    row = await conn.fetchrow("SELECT * FROM rebuild_runs WHERE id = $1", run_id)
    assert row is not None
    tally = Tally(
        indexed=row["indexed"],
        already_indexed=row["already_indexed"],
        conflicts=row["conflicts"],
        skipped=Counter(_jsonb(row["skipped"])),
    )
    return tally, int(row["failed"])


async def failure_groups(conn: Conn, run_id: int, limit: int = 20) -> list[tuple[str, int, str]]:
    """(reason, how many, first key) of a run's failures, commonest first."""
    rows = await conn.fetch(
        """SELECT reason, count(*) AS n, min(key) AS example FROM rebuild_failures
            WHERE run_id = $1 GROUP BY reason ORDER BY n DESC, reason LIMIT $2""",
        run_id,
        limit,
    )
    return [(r["reason"], int(r["n"]), r["example"]) for r in rows]


DB_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, IndexConflict)
