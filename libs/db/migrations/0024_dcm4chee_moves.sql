-- dcm4chee watcher: files it cannot read are fetched by C-MOVE from the archive's DICOM side.
-- An unreachable instance of a full-mode round is `retrieving` (its ledger row stays pending,
-- with its dcm4chee:// URI, in the round's task) until a C-MOVE for it is answered, then
-- `moved` until the copy our receiver got reaches an outcome in the pipeline, which is then
-- written on the task's ledger row (`retrieved`). One the archive does not have, or cannot
-- send, goes back to `unreachable` with the reason (its ledger row failed).
ALTER TABLE dcm4chee_instances DROP CONSTRAINT dcm4chee_instances_status_check;
ALTER TABLE dcm4chee_instances ADD CONSTRAINT dcm4chee_instances_status_check
    CHECK (status IN ('emitted', 'unreachable', 'retrieving', 'moved', 'retrieved'));
ALTER TABLE dcm4chee_instances ADD COLUMN series_uid text;
-- Instances the archive had in the series and in the study when the round read it: a
-- C-MOVE at SERIES or STUDY level when every one of them is to be moved.
ALTER TABLE dcm4chee_instances ADD COLUMN series_size integer;
ALTER TABLE dcm4chee_instances ADD COLUMN study_size integer;
ALTER TABLE dcm4chee_instances ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE dcm4chee_instances ADD COLUMN next_attempt_at timestamptz;
-- When the C-MOVE was asked for: a copy indexed or failed since then is the moved one.
ALTER TABLE dcm4chee_instances ADD COLUMN moved_at timestamptz;
ALTER TABLE dcm4chee_instances ADD COLUMN last_error text;
CREATE INDEX dcm4chee_instances_retrieving ON dcm4chee_instances (source, next_attempt_at)
    WHERE status IN ('retrieving', 'moved');
