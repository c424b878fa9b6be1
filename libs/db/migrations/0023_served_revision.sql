-- Header corrections served (ADR 0025 addendum): the instance row is the latest revision.
-- `revision_key` is the storage key of the bytes served for the instance: NULL for the
-- original (the canonical `studies/<study>/<series>/<sop>.dcm`), else the latest correction's
-- `revisions/<sop>/<file sha256>.dcm`. The original stays at its key, and each correction is
-- listed in `instance_revisions`; `revision` is the instance's own (1 = the original).
ALTER TABLE instances ADD COLUMN revision_key text;
ALTER TABLE instances ADD COLUMN revision int NOT NULL DEFAULT 1;

-- Going back (A -> B -> A) is a revision again: a correction is judged against the
-- instance's latest header, not the claim's, and a header may be claimed more than once
-- (by another file each time).
ALTER TABLE dedup_claims ADD COLUMN latest_header_sha256 text;
UPDATE dedup_claims c
   SET latest_header_sha256 = (SELECT r.header_sha256 FROM dedup_revisions r
                                WHERE r.sop_instance_uid = c.sop_instance_uid
                                ORDER BY r.claimed_at DESC, r.file_id DESC LIMIT 1)
 WHERE EXISTS (SELECT 1 FROM dedup_revisions r WHERE r.sop_instance_uid = c.sop_instance_uid);
ALTER TABLE dedup_revisions DROP CONSTRAINT dedup_revisions_pkey;
ALTER TABLE dedup_revisions ADD PRIMARY KEY (sop_instance_uid, file_id);
