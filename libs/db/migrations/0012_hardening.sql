-- What dicomflow changed in an instance it stored (e.g. 'preamble zeroed': a polyglot
-- preamble the operator allows, EXTRACTOR_ZERO_HOSTILE_PREAMBLE); empty for byte-for-byte.
ALTER TABLE instances ADD COLUMN modifications text[] NOT NULL DEFAULT '{}';

-- The audit trail is append-only, for every role the services connect as (their owner role
-- included, which privileges alone would not bind): rows are inserted, never changed.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
