-- TOTP (RFC 6238) second factor per principal and step-up per API token.
-- Secrets are stored sealed (ChaCha20-Poly1305) with the platform's TOTP
-- key from the keys directory (`platform/totp.key`), the principal id as
-- associated data: the database alone cannot produce codes.
ALTER TABLE admin_principals
    -- The secret in force (NULL: not enrolled), since when.
    ADD COLUMN totp_sealed          bytea CHECK (length(totp_sealed) BETWEEN 16 AND 256),
    ADD COLUMN totp_confirmed_at    timestamptz,
    -- The newest 30 s step a code of it was accepted for: a code is good
    -- once.
    ADD COLUMN totp_last_step       bigint,
    -- A new secret waiting for its first code; the one in force stays in
    -- force until then.
    ADD COLUMN totp_pending_sealed  bytea
        CHECK (length(totp_pending_sealed) BETWEEN 16 AND 256),
    ADD CONSTRAINT admin_principals_totp_confirmed
        CHECK ((totp_sealed IS NULL) = (totp_confirmed_at IS NULL));

-- Until when a token's high-risk calls are allowed without another code.
ALTER TABLE admin_api_tokens ADD COLUMN stepped_up_until timestamptz;
