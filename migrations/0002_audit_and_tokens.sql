-- RAP control plane schema, version 2: the audit log is append-only in the
-- schema itself, and admin API tokens always expire and record who made
-- and who revoked them. Forward-only: never edit this file once released.

-- Audit rows are evidence. Once written they are never changed or removed:
-- not by the control plane, not by a stray UPDATE or DELETE through its
-- pool, not by TRUNCATE. There is no retention step: audit rows are kept
-- forever (docs/operations.md, "Audit"). Statement-level, so even a
-- statement that matches no row is refused.
CREATE FUNCTION cluster_audit_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'cluster_audit_events is append-only: % is refused (audit rows are kept forever)', TG_OP
        USING ERRCODE = 'P0001', HINT = 'rap:audit_append_only';
END;
$$;
CREATE TRIGGER cluster_audit_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON cluster_audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION cluster_audit_events_refuse_change();

-- Admin API tokens: who made and who revoked each one.
ALTER TABLE admin_api_tokens
    ADD COLUMN created_by text NOT NULL DEFAULT '',
    ADD COLUMN revoked_by text;
UPDATE admin_api_tokens SET revoked_by = 'unknown'
 WHERE revoked_at IS NOT NULL AND revoked_by IS NULL;
ALTER TABLE admin_api_tokens
    ADD CONSTRAINT admin_api_tokens_revoked_by
        CHECK ((revoked_at IS NULL) = (revoked_by IS NULL));

-- Every token expires. Tokens made before version 2 had no expiry; they
-- expire 90 days after this migration (the default TTL of new tokens,
-- limits::API_TOKEN_TTL_DEFAULT), which leaves time to make new ones.
UPDATE admin_api_tokens SET expires_at = now() + interval '90 days'
 WHERE expires_at IS NULL;
ALTER TABLE admin_api_tokens ALTER COLUMN expires_at SET NOT NULL;
ALTER TABLE admin_api_tokens
    ADD CONSTRAINT admin_api_tokens_expiry CHECK (expires_at > created_at);

-- Listing a principal's tokens.
CREATE INDEX admin_api_tokens_principal ON admin_api_tokens (principal_id, token_id);
