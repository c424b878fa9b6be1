-- dcm4chee watcher: how far each watched archive has been read, and what was taken from it.
-- Nothing is ever written to the archive's own database.

-- The watermark: the last study handled, by the archive's change time (its own clock, no time
-- zone) and the study's primary key (ties on equal timestamps are broken by the key).
CREATE TABLE dcm4chee_watermarks (
    source        text        PRIMARY KEY,
    changed_at    timestamp   NOT NULL,
    study_pk      bigint      NOT NULL,
    studies       bigint      NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Full mode: every archive instance handed to the pipeline (`emitted`) or found without a
-- reachable file (`unreachable`, with the reason; retried when its study changes again).
CREATE TABLE dcm4chee_instances (
    source            text        NOT NULL,
    sop_instance_uid  text        NOT NULL,
    study_uid         text        NOT NULL,
    status            text        NOT NULL CHECK (status IN ('emitted', 'unreachable')),
    reason            text,
    file_id           bigint,
    seen_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, sop_instance_uid)
);
CREATE INDEX dcm4chee_instances_study ON dcm4chee_instances (source, study_uid);
