-- Header corrections served (ADR 0025 addendum): the instance row is the latest revision.
-- `revision_key` is the storage key of the bytes served for the instance: NULL for the
-- original (the canonical `studies/<study>/<series>/<sop>.dcm`), else the latest correction's
-- `revisions/<sop>/<file sha256>.dcm`. The original stays at its key, and each correction is
-- listed in `instance_revisions`; `revision` is the instance's own (1 = the original).
ALTER TABLE instances ADD COLUMN revision_key text;
ALTER TABLE instances ADD COLUMN revision int NOT NULL DEFAULT 1;
