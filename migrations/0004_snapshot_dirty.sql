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
