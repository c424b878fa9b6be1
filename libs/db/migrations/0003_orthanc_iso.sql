-- Orthanc watcher and ISO/CD-DVD watcher state.

-- Where the Orthanc watcher is in an Orthanc server's /changes feed (one row per server).
CREATE TABLE orthanc_cursor (
    server      text        PRIMARY KEY,
    last_seq    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Every Orthanc instance taken in, once: a replayed change, a webhook for a study already
-- followed through the feed, or a restart never ingests an instance twice.
CREATE TABLE orthanc_instances (
    server       text        NOT NULL,
    instance_id  text        NOT NULL,
    file_id      bigint      NOT NULL,
    staged_path  text        NOT NULL,
    cleaned_at   timestamptz,
    seen_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server, instance_id)
);
CREATE INDEX orthanc_instances_uncleaned ON orthanc_instances (file_id) WHERE cleaned_at IS NULL;

-- A disc (an .iso image or a copied-CD folder) in the ISO watcher's inbox and its import task.
CREATE TABLE iso_discs (
    task_id       uuid        PRIMARY KEY REFERENCES import_tasks (id),
    source_path   text        NOT NULL,
    scan          jsonb       NOT NULL DEFAULT '{}', -- how the disc was read, what was reported
    finalized_at  timestamptz,
    moved_to      text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX iso_discs_open ON iso_discs (source_path) WHERE finalized_at IS NULL;
