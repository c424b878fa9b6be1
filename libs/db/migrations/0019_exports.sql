-- De-identified exports (POST /v1/exports): one row per job, run by the API under a lease.
CREATE TABLE export_jobs (
    id                 uuid        PRIMARY KEY,
    study_uids         text[]      NOT NULL,
    profile            jsonb       NOT NULL,        -- options, include_burned_in, format
    status             text        NOT NULL DEFAULT 'queued'
                       CHECK (status IN ('queued', 'running', 'completed', 'failed', 'expired')),
    created_by         text,
    total              integer     NOT NULL DEFAULT 0,   -- instances the studies hold
    processed          integer     NOT NULL DEFAULT 0,   -- of which an outcome is known
    exported           integer     NOT NULL DEFAULT 0,
    excluded           integer     NOT NULL DEFAULT 0,   -- burned-in annotation risk
    failed             integer     NOT NULL DEFAULT 0,   -- unreadable or missing instances
    outcomes           jsonb       NOT NULL DEFAULT '[]', -- the excluded and failed, with why
    archive_name       text,
    archive_size       bigint,
    archive_sha256     text,
    error              text,
    attempts           integer     NOT NULL DEFAULT 0,
    lease_owner        text,
    lease_until        timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz
);
CREATE INDEX export_jobs_waiting ON export_jobs (created_at) WHERE status IN ('queued', 'running');

-- The installation's de-identification secret (HMAC key for UIDs, pseudonyms and date
-- offsets): made once, here, from PostgreSQL's strong random source (gen_random_uuid).
CREATE TABLE deid_secret (
    id      integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    secret  text    NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO deid_secret (secret)
SELECT replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
