-- Header corrections as revisions (ADR 0025): the same SOPInstanceUID and pixels with a
-- corrected header is a new revision of the instance, not a duplicate.

-- The indexed-header digest (`DicomHeader.indexed_digest`) of the file that claimed the UID.
-- NULL for claims made before this migration: their copies stay duplicates (the original
-- header's digest is unknown).
ALTER TABLE dedup_claims ADD COLUMN header_sha256 text;

-- Each corrected header of a claimed instance, claimed by the first file that carried it
-- (a redelivery of that file is the same revision again; another copy of it a duplicate).
CREATE TABLE dedup_revisions (
    sop_instance_uid  text        NOT NULL,
    header_sha256     text        NOT NULL,
    file_id           bigint      NOT NULL,
    claimed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sop_instance_uid, header_sha256)
);

-- The instance's history in the index: revision 1 is the original (the `instances` row and
-- its stored copy); each correction indexed after it is a row here, its copy kept under
-- `revisions/<sop>/<file sha256>.dcm` in storage.
CREATE TABLE instance_revisions (
    sop_instance_uid  text        NOT NULL,
    revision          int         NOT NULL CHECK (revision >= 2),
    file_id           bigint      NOT NULL,
    study_uid         text        NOT NULL,
    storage_url       text        NOT NULL,
    file_sha256       text        NOT NULL,
    header            jsonb       NOT NULL, -- patient, study, series, instance as corrected
    indexed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sop_instance_uid, revision),
    UNIQUE (sop_instance_uid, file_id)
);
CREATE INDEX instance_revisions_study ON instance_revisions (study_uid);
