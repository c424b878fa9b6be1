-- The backend connector: what the configured REST backend (a hospital information system)
-- already has from us. A patient's backend id once found or created, and each instance once
-- uploaded (or skipped, with why), so a restart or a study's next revision never creates a
-- patient or an image twice (the backend's own uniqueness answers 409 in the window between
-- its success and our record: taken as done).
CREATE TABLE connector_patients (
    patient_id   text        PRIMARY KEY,
    backend_id   text        NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE connector_images (
    sop_instance_uid  text        PRIMARY KEY,
    study_uid         text        NOT NULL,
    outcome           text        NOT NULL CHECK (outcome IN ('uploaded', 'skipped')),
    reason            text,
    recorded_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX connector_images_study ON connector_images (study_uid);
