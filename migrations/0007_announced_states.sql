-- What the control plane's watcher last announced in the audit trail
-- about each cluster's authority group and each agent's health: it writes
-- an event only when a state differs from the row, and updates the row in
-- the same transaction (under an advisory lock), so several control
-- planes announce each change once.
CREATE TABLE cluster_state_announced (
    cluster_id       rap_id PRIMARY KEY REFERENCES clusters (cluster_id),
    authority_state  text NOT NULL
                     CHECK (authority_state IN ('healthy', 'degraded', 'minority', 'fenced')),
    changed_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE node_health_announced (
    cluster_id  rap_id NOT NULL REFERENCES clusters (cluster_id),
    node_id     rap_id NOT NULL,
    state       text NOT NULL CHECK (state IN ('healthy', 'degraded', 'unhealthy', 'unknown',
                                               'stale', 'never_seen')),
    changed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, node_id)
);

-- The watcher records every storage node's view every 15 s and deletes
-- what is older than its retention, oldest first.
CREATE INDEX cluster_partitions_observed ON cluster_partitions (observed_at);
