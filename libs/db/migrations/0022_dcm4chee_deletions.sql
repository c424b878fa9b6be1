-- Studies deleted from a dcm4chee archive are noticed and marked in our index; our copy (the
-- index rows, and in full mode the stored instances) stays.

-- Every study taken from an archive (both modes), and when the archive was last seen to have
-- it; `gone_at`: when it was found missing (cleared if the study comes back).
CREATE TABLE dcm4chee_studies (
    source      text        NOT NULL,
    study_uid   text        NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    checked_at  timestamptz NOT NULL DEFAULT now(),
    gone_at     timestamptz,
    PRIMARY KEY (source, study_uid)
);
CREATE INDEX dcm4chee_studies_to_check ON dcm4chee_studies (source, checked_at)
    WHERE gone_at IS NULL;
-- Full mode already knows its studies (metadata mode learns them as they change again).
INSERT INTO dcm4chee_studies (source, study_uid)
SELECT DISTINCT source, study_uid FROM dcm4chee_instances
ON CONFLICT DO NOTHING;

-- In the index: the study's source no longer has it (when, and which source).
ALTER TABLE studies ADD COLUMN source_deleted_at timestamptz;
ALTER TABLE studies ADD COLUMN source_deleted_from text;
