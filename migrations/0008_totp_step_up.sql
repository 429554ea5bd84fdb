-- TOTP (RFC 6238) second factor per principal and step-up per API token.
-- The secret is stored sealed (ChaCha20-Poly1305) with the platform's
-- TOTP key from the keys directory (`platform/totp.key`), the principal
-- id as associated data: the database alone cannot produce codes.
ALTER TABLE admin_principals
    -- Sealed secret; with totp_confirmed_at NULL an enrolment waiting for
    -- its first code.
    ADD COLUMN totp_sealed        bytea CHECK (length(totp_sealed) BETWEEN 16 AND 256),
    ADD COLUMN totp_confirmed_at  timestamptz,
    -- The newest 30 s step a code was accepted for: a code is good once.
    ADD COLUMN totp_last_step     bigint,
    ADD CONSTRAINT admin_principals_totp_confirmed
        CHECK (totp_confirmed_at IS NULL OR totp_sealed IS NOT NULL);

-- Until when a token's high-risk calls are allowed without another code.
ALTER TABLE admin_api_tokens ADD COLUMN stepped_up_until timestamptz;
