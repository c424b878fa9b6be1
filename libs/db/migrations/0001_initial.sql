-- dicomflow schema v1. Applied once by libs.db.migrations under an advisory lock.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Import tasks: a folder (or later an ISO, a retrieve) imported as one unit of work.
CREATE TABLE import_tasks (
    id              uuid PRIMARY KEY,
    kind            text        NOT NULL DEFAULT 'folder',
    source_path     text        NOT NULL,
    description     text        NOT NULL DEFAULT '',
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    error           text,
    scan_completed  boolean     NOT NULL DEFAULT false,
    -- The watcher instance scanning it, until when (a crashed scan is resumed elsewhere).
    lease_owner     text,
    lease_until     timestamptz,
    created_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    completed_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX import_tasks_created ON import_tasks (created_at DESC);

-- The ledger: one row per discovered file, until it reaches a final outcome.
-- It is what task counters are computed from and what reconciliation re-emits.
CREATE TABLE ingest_files (
    id                bigserial   PRIMARY KEY,
    task_id           uuid        REFERENCES import_tasks (id),
    source            text        NOT NULL,
    uri               text        NOT NULL,
    origin            text        NOT NULL DEFAULT '',
    size              bigint      NOT NULL,
    correlation_id    text        NOT NULL,
    status            text        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'indexed', 'duplicate', 'conflict', 'failed')),
    reason            text,
    stage             text,
    sop_instance_uid  text,
    study_uid         text,
    emitted           integer     NOT NULL DEFAULT 1,
    discovered_at     timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);
CREATE UNIQUE INDEX ingest_files_task_uri ON ingest_files (task_id, uri) WHERE task_id IS NOT NULL;
CREATE INDEX ingest_files_pending ON ingest_files (updated_at) WHERE status = 'pending';
CREATE INDEX ingest_files_task_status ON ingest_files (task_id, status);
CREATE INDEX ingest_files_finished ON ingest_files (finished_at DESC) WHERE finished_at IS NOT NULL;

-- NAS watcher: what each watched file looked like when it was last emitted.
CREATE TABLE nas_seen (
    dir       text        NOT NULL,
    name      text        NOT NULL,
    size      bigint      NOT NULL,
    mtime_ns  bigint      NOT NULL,
    file_id   bigint,
    seen_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dir, name)
);

-- Dedup: the first (SOPInstanceUID, content) claimed, and by which discovered file.
CREATE TABLE dedup_claims (
    sop_instance_uid  text        PRIMARY KEY,
    content_sha256    text        NOT NULL,
    file_id           bigint      NOT NULL,
    claimed_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dedup_claims_content ON dedup_claims (content_sha256);

-- The index.
CREATE TABLE patients (
    id            bigserial   PRIMARY KEY,
    patient_key   text        NOT NULL UNIQUE,
    patient_id    text        NOT NULL DEFAULT '',
    issuer        text        NOT NULL DEFAULT '',
    patient_name  text        NOT NULL DEFAULT '',
    name_search   text        NOT NULL DEFAULT '',
    birth_date    date,
    sex           text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX patients_name_search_trgm ON patients USING gin (name_search gin_trgm_ops);
CREATE INDEX patients_name_search_prefix ON patients (name_search text_pattern_ops);
CREATE INDEX patients_patient_id ON patients (patient_id);
CREATE INDEX patients_birth_date ON patients (birth_date);

CREATE TABLE studies (
    study_uid          text        PRIMARY KEY,
    patient_pk         bigint      NOT NULL REFERENCES patients (id),
    study_date         date,
    study_time         text        NOT NULL DEFAULT '',
    accession_number   text        NOT NULL DEFAULT '',
    study_description  text        NOT NULL DEFAULT '',
    study_id           text        NOT NULL DEFAULT '',
    referring_physician text       NOT NULL DEFAULT '',
    modalities         text[]      NOT NULL DEFAULT '{}',
    series_count       integer     NOT NULL DEFAULT 0,
    instance_count     integer     NOT NULL DEFAULT 0,
    size_bytes         bigint      NOT NULL DEFAULT 0,
    storage_prefix     text        NOT NULL,
    revision           bigint      NOT NULL DEFAULT 0,
    stable             boolean     NOT NULL DEFAULT false,
    last_instance_at   timestamptz NOT NULL DEFAULT now(),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX studies_patient ON studies (patient_pk);
CREATE INDEX studies_date ON studies (study_date);
CREATE INDEX studies_accession ON studies (accession_number);
CREATE INDEX studies_modalities ON studies USING gin (modalities);
CREATE INDEX studies_unstable ON studies (last_instance_at) WHERE NOT stable;

CREATE TABLE series (
    series_uid          text    PRIMARY KEY,
    study_uid           text    NOT NULL REFERENCES studies (study_uid),
    modality            text    NOT NULL DEFAULT '',
    series_number       integer,
    series_description  text    NOT NULL DEFAULT '',
    body_part           text    NOT NULL DEFAULT '',
    instance_count      integer NOT NULL DEFAULT 0,
    size_bytes          bigint  NOT NULL DEFAULT 0
);
CREATE INDEX series_study ON series (study_uid);

CREATE TABLE instances (
    sop_instance_uid     text        PRIMARY KEY,
    series_uid           text        NOT NULL REFERENCES series (series_uid),
    study_uid            text        NOT NULL REFERENCES studies (study_uid),
    sop_class_uid        text        NOT NULL DEFAULT '',
    instance_number      integer,
    transfer_syntax_uid  text        NOT NULL DEFAULT '',
    specific_character_set text      NOT NULL DEFAULT '',
    rows                 integer,
    columns              integer,
    number_of_frames     integer,
    size_bytes           bigint      NOT NULL,
    file_sha256          text        NOT NULL,
    content_sha256       text        NOT NULL,
    storage_url          text        NOT NULL,
    same_content_as      text,
    first_file_id        bigint      NOT NULL,
    indexed_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instances_series ON instances (series_uid);
CREATE INDEX instances_study ON instances (study_uid);
CREATE INDEX instances_content ON instances (content_sha256);

-- Every place an instance was seen at (first copy, duplicates, later rescans).
CREATE TABLE instance_sources (
    sop_instance_uid  text        NOT NULL,
    source            text        NOT NULL,
    uri               text        NOT NULL,
    file_id           bigint      NOT NULL,
    content_sha256    text        NOT NULL,
    seen_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sop_instance_uid, source, uri)
);

-- Same SOPInstanceUID, different content: the original is never overwritten.
CREATE TABLE conflicts (
    sop_instance_uid  text        NOT NULL,
    content_sha256    text        NOT NULL,
    study_uid         text        NOT NULL,
    storage_url       text        NOT NULL,
    file_id           bigint      NOT NULL,
    source            text        NOT NULL,
    uri               text        NOT NULL,
    detected_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sop_instance_uid, content_sha256)
);

-- Access.
CREATE TABLE api_keys (
    id            bigserial   PRIMARY KEY,
    name          text        NOT NULL DEFAULT '',
    role          text        NOT NULL CHECK (role IN ('clinician', 'ops', 'admin')),
    key_prefix    text        NOT NULL,
    key_hash      text        NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz
);

CREATE TABLE audit_log (
    id            bigserial   PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    api_key_id    bigint      REFERENCES api_keys (id),
    role          text,
    action        text        NOT NULL,
    method        text        NOT NULL,
    path          text        NOT NULL,
    query         jsonb       NOT NULL DEFAULT '{}',
    status_code   integer     NOT NULL,
    result_count  integer,
    client        text
);
CREATE INDEX audit_log_at ON audit_log (at DESC);
