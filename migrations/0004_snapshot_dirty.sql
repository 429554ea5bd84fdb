-- Scopes whose content may have changed since their last publication.
-- A mutation marks the scopes it touches in its own transaction; the
-- publisher compiles, publishes and unmarks them in one fenced
-- transaction, so a mark disappears only with a recorded publication.
CREATE TABLE snapshot_dirty (
    cluster_id  rap_id NOT NULL REFERENCES clusters (cluster_id),
    scope       text NOT NULL CHECK (length(scope) BETWEEN 1 AND 80),
    marked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, scope)
);

-- The envelope itself, so that operators can fetch and verify what was
-- published without asking the storage nodes. Older rows have none.
ALTER TABLE snapshot_publications ADD COLUMN envelope bytea;

-- Trust roots after genesis (clusters.trust_root is generation 1): one row
-- per snapshot-signing key rotation, chained to the one before; the
-- `trust/root` shard carries genesis and these, oldest first.
CREATE TABLE cluster_trust_roots (
    cluster_id  rap_id NOT NULL REFERENCES clusters (cluster_id),
    generation  bigint NOT NULL CHECK (generation >= 2),
    root        bytea NOT NULL CHECK (length(root) BETWEEN 1 AND 65536),
    key_id      text NOT NULL CHECK (key_id ~ '^[0-9a-f]{64}$'),
    rotated_by  text NOT NULL,
    rotated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, generation)
);
