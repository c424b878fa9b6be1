"""Dedup claims: the first discovered file to claim a SOPInstanceUID owns it.

The claim is keyed by the discovered file (ledger id), so a redelivered or
re-emitted discovery of the first copy is recognised as that first copy again,
never as its own duplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from libs.db import Conn

Verdict = Literal["new", "same_content_other_uid", "duplicate", "conflict", "revision"]


@dataclass(frozen=True)
class Claim:
    verdict: Verdict
    related_sop_instance_uid: str | None = None


async def claim(conn: Conn, *, sop_instance_uid: str, content_sha256: str, file_id: int) -> Claim:
    async with conn.transaction():
        row = await conn.fetchrow(
            """
            INSERT INTO dedup_claims (sop_instance_uid, content_sha256, file_id)
            VALUES ($1, $2, $3)
            ON CONFLICT (sop_instance_uid)
                DO UPDATE SET sop_instance_uid = EXCLUDED.sop_instance_uid
            RETURNING content_sha256, file_id, claimed_at
            """,
            sop_instance_uid,
            content_sha256,
            file_id,
        )
        assert row is not None
        if row["content_sha256"] != content_sha256:
            return Claim("conflict", sop_instance_uid)
        if row["file_id"] != file_id:
            return Claim("duplicate", sop_instance_uid)
        # Only claims older than this one: a redelivered message gets its first verdict
        # again, even after a later UID with the same content has been claimed.
        other = await conn.fetchval(
            """SELECT sop_instance_uid FROM dedup_claims
                WHERE content_sha256 = $1 AND (claimed_at, sop_instance_uid) < ($3, $2)
                ORDER BY claimed_at, sop_instance_uid LIMIT 1""",
            content_sha256,
            sop_instance_uid,
            row["claimed_at"],
        )
        if other is not None:
            return Claim("same_content_other_uid", other)
        return Claim("new")


@dataclass(frozen=True)
class ClaimRequest:
    sop_instance_uid: str
    content_sha256: str
    file_id: int
    # `DicomHeader.indexed_digest()`: with it, the same content under a header the claim has
    # not seen is a revision (ADR 0025); None judges by content alone.
    header_sha256: str | None = None


async def claim_many(conn: Conn, requests: Sequence[ClaimRequest]) -> list[Claim]:
    """`claim` for a batch in one transaction and two statements (three with corrected
    headers), one verdict per request in order; the same as claiming them one after the other
    (a UID twice in the batch: the first request claims it, the later ones are judged against
    that claim).

    Same UID, same content, another file: a `revision` when its header digest differs from
    the instance's latest (the claim's, or its last correction's; A -> B -> A is a third
    revision), owned by that file (its redelivery is the same revision again, another copy
    of it a duplicate); else, or when a digest is unknown, a duplicate."""
    first: dict[str, ClaimRequest] = {}
    for r in requests:
        first.setdefault(r.sop_instance_uid, r)
    ordered = sorted(first.values(), key=lambda r: r.sop_instance_uid)  # one lock order
    async with conn.transaction():
        rows = await conn.fetch(
            """
            INSERT INTO dedup_claims (sop_instance_uid, content_sha256, file_id, header_sha256)
            SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])
            ON CONFLICT (sop_instance_uid)
                DO UPDATE SET sop_instance_uid = EXCLUDED.sop_instance_uid
            RETURNING sop_instance_uid, content_sha256, file_id, claimed_at, header_sha256,
                      coalesce(latest_header_sha256, header_sha256) AS latest_header_sha256
            """,
            [r.sop_instance_uid for r in ordered],
            [r.content_sha256 for r in ordered],
            [r.file_id for r in ordered],
            [r.header_sha256 for r in ordered],
        )
        claims = {row["sop_instance_uid"]: row for row in rows}
        revisions = await _claim_revisions(
            conn, claims, [r for r in requests if _corrects(claims, r)]
        )
        own = [r for r in ordered if _owns(claims[r.sop_instance_uid], r)]
        # Only claims older than each one: a redelivered message gets its first verdict again.
        older = await conn.fetch(
            """SELECT u.uid, (SELECT c.sop_instance_uid FROM dedup_claims c
                               WHERE c.content_sha256 = u.sha
                                 AND (c.claimed_at, c.sop_instance_uid) < (u.at, u.uid)
                               ORDER BY c.claimed_at, c.sop_instance_uid LIMIT 1) AS other
                 FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(uid, sha, at)""",
            [r.sop_instance_uid for r in own],
            [r.content_sha256 for r in own],
            [claims[r.sop_instance_uid]["claimed_at"] for r in own],
        )
    others = {row["uid"]: row["other"] for row in older}
    out = []
    for r in requests:
        row = claims[r.sop_instance_uid]
        if row["content_sha256"] != r.content_sha256:
            out.append(Claim("conflict", r.sop_instance_uid))
        elif row["file_id"] != r.file_id:
            revised = (r.sop_instance_uid, r.file_id) in revisions
            verdict: Verdict = "revision" if revised else "duplicate"
            out.append(Claim(verdict, r.sop_instance_uid))
        elif others.get(r.sop_instance_uid) is not None:
            out.append(Claim("same_content_other_uid", others[r.sop_instance_uid]))
        else:
            out.append(Claim("new"))
    return out


def _corrects(claims: dict[str, Any], r: ClaimRequest) -> bool:
    """Same content as the claim, another file, both headers known: a revision or not."""
    row = claims[r.sop_instance_uid]
    return bool(
        row["content_sha256"] == r.content_sha256
        and row["file_id"] != r.file_id
        and row["header_sha256"] is not None
        and r.header_sha256 is not None
    )


async def _claim_revisions(
    conn: Conn, claims: dict[str, Any], requests: Sequence[ClaimRequest]
) -> set[tuple[str, int]]:
    """The (UID, file) pairs that are revisions: a file that claimed one before (its
    redelivery), or a header other than the instance's latest (the claim's, or its last
    correction's), judged in order so that going back (A -> B -> A) is a revision again.
    Called with the claims' rows locked (the upsert), so one instance is judged at a time."""
    if not requests:
        return set()
    known = await conn.fetch(
        """SELECT sop_instance_uid, file_id FROM dedup_revisions
            WHERE (sop_instance_uid, file_id) IN
                  (SELECT * FROM unnest($1::text[], $2::bigint[]))""",
        [r.sop_instance_uid for r in requests],
        [r.file_id for r in requests],
    )
    owned = {(row["sop_instance_uid"], row["file_id"]) for row in known}
    latest = {uid: row["latest_header_sha256"] for uid, row in claims.items()}
    new: list[ClaimRequest] = []
    for r in requests:
        uid = r.sop_instance_uid
        if (uid, r.file_id) in owned or r.header_sha256 == latest[uid]:
            continue
        owned.add((uid, r.file_id))
        new.append(r)
        latest[uid] = r.header_sha256
    if new:
        await conn.execute(
            """INSERT INTO dedup_revisions (sop_instance_uid, header_sha256, file_id)
               SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
               ON CONFLICT DO NOTHING""",
            [r.sop_instance_uid for r in new],
            [r.header_sha256 for r in new],
            [r.file_id for r in new],
        )
        moved = sorted({r.sop_instance_uid for r in new})
        await conn.execute(
            """UPDATE dedup_claims c SET latest_header_sha256 = u.sha
                 FROM unnest($1::text[], $2::text[]) AS u(uid, sha)
                WHERE c.sop_instance_uid = u.uid""",
            moved,
            [latest[uid] for uid in moved],
        )
    return owned


def _owns(row: Any, r: ClaimRequest) -> bool:
    return bool(row["content_sha256"] == r.content_sha256 and row["file_id"] == r.file_id)
