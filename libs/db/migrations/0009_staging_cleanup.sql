-- Staged copies removed once the pipeline is done with them: per staging owner (a source's
-- staging folder) and kind (done = indexed/duplicate, kept = failed/conflict), how far in the
-- ledger's finished rows the cleanup has gone.
CREATE TABLE staging_cleanup (
    owner        text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('done', 'kept')),
    finished_at  timestamptz NOT NULL,
    file_id      bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, kind)
);

-- Before an old staging folder goes, the files a ledger row still needs are looked up by URI.
CREATE INDEX ingest_files_uri ON ingest_files (uri);
