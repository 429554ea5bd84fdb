-- Cache replicas: storage nodes that are not voters (`storage_nodes.role =
-- 'cache'`) and hold only the shards placement assigns them. Placement
-- gives each node agent `cache_replicas` caches over distinct zones, its
-- own zone first (rap_authority::placement::caches_for), so it needs to
-- know where node agents live and how many caches each should have.

-- Where a node agent lives (`rapctl node set-location`); '' = unknown.
-- Per membership: the fence and the audit row of a change are the
-- cluster's, and a node is one host. A new membership (after a
-- revocation) starts unknown again.
ALTER TABLE cluster_memberships
    ADD COLUMN region text NOT NULL DEFAULT '' CHECK (region ~ '^[A-Za-z0-9._-]{0,63}$'),
    ADD COLUMN zone   text NOT NULL DEFAULT '' CHECK (zone ~ '^[A-Za-z0-9._-]{0,63}$');

-- Cache replicas per node agent (`rapctl cluster cache-policy`); 0: caches
-- hold nothing. At most rap_authority::placement::CACHE_REPLICAS_MAX (5),
-- the default is CACHE_REPLICAS_DEFAULT (2).
ALTER TABLE clusters
    ADD COLUMN cache_replicas integer NOT NULL DEFAULT 2
        CHECK (cache_replicas BETWEEN 0 AND 5);
