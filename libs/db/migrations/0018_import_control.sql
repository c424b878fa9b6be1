-- Imports people can watch and control (ADR 0022).
-- A task may be paused (its scan stops, its files not yet read are held), resumed, or
-- cancelled: `cancelling` while what was already emitted reaches an outcome, then
-- `cancelled` with its counters.
ALTER TABLE import_tasks DROP CONSTRAINT import_tasks_status_check;
ALTER TABLE import_tasks ADD CONSTRAINT import_tasks_status_check
    CHECK (status IN ('pending', 'running', 'paused', 'cancelling', 'cancelled', 'completed',
                      'failed'));
ALTER TABLE import_tasks ADD COLUMN paused_at timestamptz;
ALTER TABLE import_tasks ADD COLUMN cancelled_at timestamptz;

-- A file of a cancelled task that was not read yet ends `cancelled` (a final outcome).
ALTER TABLE ingest_files DROP CONSTRAINT ingest_files_status_check;
ALTER TABLE ingest_files ADD CONSTRAINT ingest_files_status_check
    CHECK (status IN ('pending', 'indexed', 'duplicate', 'conflict', 'failed', 'cancelled'));
-- Set by the extractor when it sets aside a file of a paused task (still pending); resuming
-- the task emits these again.
ALTER TABLE ingest_files ADD COLUMN held_at timestamptz;
CREATE INDEX ingest_files_held ON ingest_files (task_id) WHERE held_at IS NOT NULL;

-- Which discovered file brought a patient into the index: "patients new to the index" of a
-- task are those whose first file is one of the task's.
ALTER TABLE patients ADD COLUMN first_file_id bigint;
UPDATE patients p
   SET first_file_id = (SELECT i.first_file_id FROM instances i
                          JOIN studies s ON s.study_uid = i.study_uid
                         WHERE s.patient_pk = p.id
                         ORDER BY i.indexed_at, i.first_file_id LIMIT 1);
CREATE INDEX patients_first_file ON patients (first_file_id);
