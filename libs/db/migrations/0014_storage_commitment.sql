-- Storage commitment asks whether a requested instance failed in the pipeline: the failed
-- and conflicting ledger rows, by SOP Instance UID (few, so a small partial index).
CREATE INDEX IF NOT EXISTS ingest_files_failed_sop
    ON ingest_files (sop_instance_uid) WHERE status IN ('failed', 'conflict');
