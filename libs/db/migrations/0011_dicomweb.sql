-- DICOMweb: the full header of each instance in the DICOM JSON model (PS3.18 F), as the
-- extractor made it (text, not jsonb: it is answered as stored, never queried inside), so
-- WADO-RS metadata never reads storage. NULL for instances indexed before, or whose header
-- could not be rendered: the API then reads the stored file.
ALTER TABLE instances ADD COLUMN dicom_json text;

-- QIDO-RS matches series by modality across studies (/series?Modality=CT).
CREATE INDEX series_modality ON series (modality);

-- QIDO-RS answers newest study first (as the API's search): with this index the first page,
-- and a filter matching many studies, walk studies in that order instead of sorting them all.
CREATE INDEX studies_date_desc ON studies (study_date DESC NULLS LAST, study_uid);
