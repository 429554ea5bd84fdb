-- Storage nodes enrol like agents; identities name their kind; a revoked
-- key needs an owner's override to join again. Forward-only.

-- Join tokens: `join` for agents, `storage` for one named storage node
-- (single use; approved at once while the cluster has no authority group
-- yet, by an operator afterwards).
ALTER TABLE node_join_tokens DROP CONSTRAINT node_join_tokens_scope_check;
ALTER TABLE node_join_tokens
    ADD CONSTRAINT node_join_tokens_scope_check CHECK (scope IN ('join', 'storage'));
ALTER TABLE node_join_tokens ADD COLUMN storage_node_id rap_id;
ALTER TABLE node_join_tokens
    ADD CONSTRAINT node_join_tokens_storage_named
        CHECK ((scope = 'storage') = (storage_node_id IS NOT NULL));
ALTER TABLE node_join_tokens
    ADD CONSTRAINT node_join_tokens_storage_single_use
        CHECK (scope <> 'storage' OR max_uses = 1);

-- Join requests: what the host becomes; a storage node names its id and
-- the server names its certificate carries.
ALTER TABLE node_join_requests
    ADD COLUMN kind text NOT NULL DEFAULT 'node' CHECK (kind IN ('node', 'storage'));
ALTER TABLE node_join_requests ADD COLUMN requested_node_id rap_id;
ALTER TABLE node_join_requests ADD COLUMN server_names text[] NOT NULL DEFAULT '{}';
ALTER TABLE node_join_requests
    ADD CONSTRAINT node_join_requests_storage_named
        CHECK ((kind = 'storage') = (requested_node_id IS NOT NULL));
ALTER TABLE node_join_requests
    ADD CONSTRAINT node_join_requests_server_names_storage_only
        CHECK (kind = 'storage' OR cardinality(server_names) = 0);

-- Identities: an agent's (`node`) or a storage node's.
ALTER TABLE node_identities
    ADD COLUMN kind text NOT NULL DEFAULT 'node' CHECK (kind IN ('node', 'storage'));
CREATE INDEX node_identities_fingerprint ON node_identities (fingerprint);

-- An owner's permission for a key with a revoked certificate to submit
-- one more join request to one cluster. Used once.
CREATE TABLE revoked_key_overrides (
    override_id      bigserial PRIMARY KEY,
    cluster_id       rap_id NOT NULL REFERENCES clusters (cluster_id),
    fingerprint      text NOT NULL CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
    allowed_by       text NOT NULL,
    reason           text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    created_at       timestamptz NOT NULL DEFAULT now(),
    used_by_request  rap_id REFERENCES node_join_requests (join_request_id),
    used_at          timestamptz,
    CHECK ((used_at IS NULL) = (used_by_request IS NULL))
);
CREATE UNIQUE INDEX revoked_key_overrides_one_open
    ON revoked_key_overrides (cluster_id, fingerprint) WHERE used_at IS NULL;
