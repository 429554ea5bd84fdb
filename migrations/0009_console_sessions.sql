-- Sign-in sessions of the web console (`rap-controlplane serve
-- --console-listen`). A session belongs to the API token it signed in
-- with: revoking or expiring the token, or disabling its principal, ends
-- the session at the next request. Only the blake3 hash of the session
-- secret (the cookie) is stored, with the CSRF token of its forms.
CREATE TABLE console_sessions (
    session_hash   bytea PRIMARY KEY CHECK (length(session_hash) = 32),
    token_id       text NOT NULL REFERENCES admin_api_tokens (token_id) ON DELETE CASCADE,
    principal_id   text NOT NULL REFERENCES admin_principals (principal_id) ON DELETE CASCADE,
    csrf_token     text NOT NULL CHECK (length(csrf_token) BETWEEN 32 AND 128),
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Idle timeout: a request after last_seen_at + idle ends the session.
    last_seen_at   timestamptz NOT NULL DEFAULT now(),
    -- Absolute timeout, fixed at sign-in.
    expires_at     timestamptz NOT NULL,
    -- Peer address at sign-in (for the operator's eyes only).
    peer           text NOT NULL DEFAULT '' CHECK (length(peer) <= 64)
);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
CREATE INDEX console_sessions_principal ON console_sessions (principal_id);
