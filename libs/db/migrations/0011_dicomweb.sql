-- DICOMweb: the full header of each instance in the DICOM JSON model (PS3.18 F), as the
-- extractor made it (text, not jsonb: it is answered as stored, never queried inside), so
-- WADO-RS metadata never reads storage. NULL for instances indexed before, or whose header
-- could not be rendered: the API then reads the stored file.
ALTER TABLE instances ADD COLUMN dicom_json text;

-- QIDO-RS matches series by modality across studies (/series?Modality=CT).
CREATE INDEX series_modality ON series (modality);
