-- What dicomflow changed in an instance it stored (e.g. 'preamble zeroed': a polyglot
-- preamble the operator allows, EXTRACTOR_ZERO_HOSTILE_PREAMBLE); empty for byte-for-byte.
ALTER TABLE instances ADD COLUMN modifications text[] NOT NULL DEFAULT '{}';
