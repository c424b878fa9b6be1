-- `dicomflow rebuild-index`: the index rebuilt from storage, resumable.
-- A run walks the store's keys in ascending order; `checkpoint` is the last key whose outcome
-- (and that of every key before it) is committed, in the same transaction as the index writes
-- it covers, so a restart continues right after it and never indexes a key twice.
CREATE TABLE rebuild_runs (
    id               bigserial   PRIMARY KEY,
    storage_url      text        NOT NULL,
    status           text        NOT NULL DEFAULT 'running'
                     CHECK (status IN ('running', 'completed', 'abandoned')),
    checkpoint       text        NOT NULL DEFAULT '',
    indexed          bigint      NOT NULL DEFAULT 0,   -- instances new to the index
    already_indexed  bigint      NOT NULL DEFAULT 0,   -- instances the index had already
    conflicts        bigint      NOT NULL DEFAULT 0,   -- conflicting copies recorded
    skipped          jsonb       NOT NULL DEFAULT '{}', -- reason -> count (previews, ...)
    failed           bigint      NOT NULL DEFAULT 0,
    started_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE UNIQUE INDEX rebuild_runs_one_running ON rebuild_runs (storage_url)
    WHERE status = 'running';

-- Objects that could not be indexed, with the reason, for the report and for inspection.
CREATE TABLE rebuild_failures (
    run_id  bigint NOT NULL REFERENCES rebuild_runs (id),
    key     text   NOT NULL,
    reason  text   NOT NULL,
    PRIMARY KEY (run_id, key)
);

-- A claim's time is when it was made, not when its transaction began: a rebuild claims a
-- batch in one transaction, and "same content as an earlier UID" must follow the order the
-- claims were made in (the pipeline claims one per transaction: no change there).
ALTER TABLE dedup_claims ALTER COLUMN claimed_at SET DEFAULT clock_timestamp();
