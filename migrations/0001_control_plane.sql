-- RAP control plane schema, version 1 (DESIGN.md §1, §3; seed "Target Data
-- Model"). PostgreSQL is the source of truth. Forward-only: later changes
-- are new numbered files, never edits of this one.
--
-- Conventions
-- * Ids are DNS labels (rap-proto ids): lowercase letters, digits, '-',
--   1..63 characters, checked by the domain `rap_id`.
-- * Every status column is CHECK-constrained; rules such as "one active
--   membership per (cluster, node)" are unique partial indexes.
-- * No private key and no raw secret is ever stored: join tokens and API
--   tokens keep blake3(secret) only; node identities keep the public key.

CREATE DOMAIN rap_id AS text
    CHECK (VALUE ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$');

-- Tenants.
CREATE TABLE organizations (
    org_id      rap_id PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- First-class clusters. Key material lives in key files (0600) next to the
-- control plane, never here; only public fingerprints and the public,
-- signed genesis trust root are stored.
CREATE TABLE clusters (
    cluster_id      rap_id PRIMARY KEY,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    region          text NOT NULL DEFAULT '',
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    ca_fingerprint  text NOT NULL CHECK (ca_fingerprint ~ '^[0-9a-f]{64}$'),
    ca_cert_pem     text NOT NULL,
    signing_key_id  text NOT NULL CHECK (signing_key_id ~ '^[0-9a-f]{64}$'),
    trust_root      bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Authority terms: one row per term a cluster has had; the row with
-- ended_at IS NULL is the current one. `last_seq` is the newest fence seq
-- a mutation was applied with: a fenced mutation's transaction updates it
-- conditionally (same term, higher seq) or aborts (DESIGN.md §3).
CREATE TABLE cluster_authority_terms (
    cluster_id      rap_id NOT NULL REFERENCES clusters (cluster_id),
    authority_term  bigint NOT NULL CHECK (authority_term >= 1),
    last_seq        bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    reason          text NOT NULL CHECK (reason IN ('bootstrap', 'promotion')),
    survivors       text[] NOT NULL DEFAULT '{}',
    started_at      timestamptz NOT NULL DEFAULT now(),
    ended_at        timestamptz,
    PRIMARY KEY (cluster_id, authority_term)
);
CREATE UNIQUE INDEX cluster_authority_terms_one_current
    ON cluster_authority_terms (cluster_id) WHERE ended_at IS NULL;

-- Host-level identities. A node may be a member of several clusters.
CREATE TABLE nodes (
    node_id            rap_id PRIMARY KEY,
    display_name       text NOT NULL DEFAULT '',
    enrollment_status  text NOT NULL DEFAULT 'enrolled'
                       CHECK (enrollment_status IN ('enrolled', 'revoked')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Inventory folders: a cluster-scoped tree. Groups grant nothing. Cycles
-- are refused by the trigger below.
CREATE TABLE node_groups (
    cluster_id       rap_id NOT NULL REFERENCES clusters (cluster_id),
    group_id         rap_id NOT NULL,
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    parent_group_id  rap_id,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, group_id),
    FOREIGN KEY (cluster_id, parent_group_id) REFERENCES node_groups (cluster_id, group_id),
    CHECK (parent_group_id IS NULL OR parent_group_id <> group_id)
);

CREATE FUNCTION node_groups_refuse_cycle() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.parent_group_id IS NULL THEN
        RETURN NEW;
    END IF;
    IF EXISTS (
        WITH RECURSIVE up(group_id, parent_group_id) AS (
            SELECT g.group_id, g.parent_group_id FROM node_groups g
             WHERE g.cluster_id = NEW.cluster_id AND g.group_id = NEW.parent_group_id
            UNION
            SELECT g.group_id, g.parent_group_id FROM node_groups g
              JOIN up ON g.cluster_id = NEW.cluster_id AND g.group_id = up.parent_group_id
        )
        SELECT 1 FROM up WHERE up.group_id = NEW.group_id
    ) THEN
        RAISE EXCEPTION 'moving group % under % would make a cycle', NEW.group_id, NEW.parent_group_id
            USING ERRCODE = 'P0001', HINT = 'rap:group_cycle';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER node_groups_no_cycle
    BEFORE INSERT OR UPDATE OF parent_group_id ON node_groups
    FOR EACH ROW EXECUTE FUNCTION node_groups_refuse_cycle();

-- Node <-> cluster. At most one active membership per (cluster, node);
-- a membership sits in at most one group (the column).
CREATE TABLE cluster_memberships (
    membership_id      bigserial PRIMARY KEY,
    cluster_id         rap_id NOT NULL REFERENCES clusters (cluster_id),
    node_id            rap_id NOT NULL REFERENCES nodes (node_id),
    membership_status  text NOT NULL DEFAULT 'active'
                       CHECK (membership_status IN ('active', 'disabled', 'revoked')),
    group_id           rap_id,
    joined_at          timestamptz NOT NULL DEFAULT now(),
    last_seen_at       timestamptz,
    metadata           jsonb NOT NULL DEFAULT '{}'::jsonb,
    FOREIGN KEY (cluster_id, group_id) REFERENCES node_groups (cluster_id, group_id)
);
CREATE UNIQUE INDEX cluster_memberships_one_active
    ON cluster_memberships (cluster_id, node_id) WHERE membership_status = 'active';

-- Public identity material per (cluster, node): never a private key.
CREATE TABLE node_identities (
    identity_id             bigserial PRIMARY KEY,
    cluster_id              rap_id NOT NULL REFERENCES clusters (cluster_id),
    node_id                 rap_id NOT NULL REFERENCES nodes (node_id),
    public_key              bytea NOT NULL CHECK (length(public_key) = 32),
    fingerprint             text NOT NULL CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
    certificate_serial      text NOT NULL UNIQUE CHECK (certificate_serial ~ '^[0-9a-f]{2,64}$'),
    certificate_not_before  timestamptz NOT NULL,
    certificate_not_after   timestamptz NOT NULL,
    certificate_pem         text NOT NULL,
    identity_status         text NOT NULL DEFAULT 'active'
                            CHECK (identity_status IN ('active', 'rotated', 'revoked')),
    created_at              timestamptz NOT NULL DEFAULT now(),
    rotated_at              timestamptz,
    revoked_at              timestamptz,
    CHECK (certificate_not_after > certificate_not_before),
    CHECK ((identity_status = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE UNIQUE INDEX node_identities_one_active
    ON node_identities (cluster_id, node_id) WHERE identity_status = 'active';

-- Join tokens: only blake3(secret) is stored; lookup by id.
CREATE TABLE node_join_tokens (
    token_id    rap_id PRIMARY KEY,
    cluster_id  rap_id NOT NULL REFERENCES clusters (cluster_id),
    token_hash  bytea NOT NULL CHECK (length(token_hash) = 32),
    scope       text NOT NULL DEFAULT 'join' CHECK (scope IN ('join')),
    expires_at  timestamptz NOT NULL,
    max_uses    integer NOT NULL CHECK (max_uses BETWEEN 1 AND 1000),
    used_count  integer NOT NULL DEFAULT 0 CHECK (used_count >= 0 AND used_count <= max_uses),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    revoked_by  text,
    CHECK (expires_at > created_at)
);

-- Enrollment requests waiting for (or done with) review.
CREATE TABLE node_join_requests (
    join_request_id        rap_id PRIMARY KEY,
    cluster_id             rap_id NOT NULL REFERENCES clusters (cluster_id),
    token_id               rap_id NOT NULL REFERENCES node_join_tokens (token_id),
    node_name              text NOT NULL DEFAULT '',
    fingerprint            text NOT NULL CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
    public_key             bytea NOT NULL CHECK (length(public_key) = 32),
    proof_nonce            bytea NOT NULL CHECK (length(proof_nonce) BETWEEN 16 AND 64),
    reported_capabilities  jsonb NOT NULL DEFAULT '[]'::jsonb,
    reported_facts         jsonb NOT NULL DEFAULT '{}'::jsonb,
    requested_roles        text[] NOT NULL DEFAULT '{}',
    status                 text NOT NULL DEFAULT 'pending'
                           CHECK (status IN ('pending', 'approved', 'rejected', 'expired')),
    reviewed_by            text,
    reviewed_at            timestamptz,
    approved_node_id       rap_id REFERENCES nodes (node_id),
    rejection_reason       text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'approved') = (approved_node_id IS NOT NULL)),
    CHECK (status = 'pending' OR reviewed_at IS NOT NULL OR status = 'expired')
);
-- One open request per key and cluster; a proof is good for one request.
CREATE UNIQUE INDEX node_join_requests_one_pending
    ON node_join_requests (cluster_id, fingerprint) WHERE status = 'pending';
CREATE UNIQUE INDEX node_join_requests_nonce_once
    ON node_join_requests (fingerprint, proof_nonce);

-- What a node can technically do. Capabilities are never permissions.
CREATE TABLE node_capabilities (
    cluster_id   rap_id NOT NULL REFERENCES clusters (cluster_id),
    node_id      rap_id NOT NULL REFERENCES nodes (node_id),
    capability   text NOT NULL CHECK (capability ~ '^[a-z0-9_]{1,63}$'),
    detail       text NOT NULL DEFAULT '',
    source       text NOT NULL CHECK (source IN ('join', 'heartbeat')),
    reported_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, node_id, capability)
);

-- Explicit authorization of a node for a role, per cluster and optionally
-- per organization.
CREATE TABLE node_role_assignments (
    assignment_id    bigserial PRIMARY KEY,
    cluster_id       rap_id NOT NULL REFERENCES clusters (cluster_id),
    node_id          rap_id NOT NULL REFERENCES nodes (node_id),
    role             rap_id NOT NULL,
    organization_id  rap_id REFERENCES organizations (org_id),
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'removed')),
    assigned_by      text NOT NULL,
    assigned_at      timestamptz NOT NULL DEFAULT now(),
    removed_by       text,
    removed_at       timestamptz,
    policy           jsonb NOT NULL DEFAULT '{}'::jsonb,
    fence_term       bigint NOT NULL,
    fence_seq        bigint NOT NULL,
    CHECK ((status = 'removed') = (removed_at IS NOT NULL))
);
CREATE UNIQUE INDEX node_role_assignments_one_active
    ON node_role_assignments (cluster_id, node_id, role, coalesce(organization_id, ''))
    WHERE status = 'active';

-- Service workloads: what the control plane wants vs what the agent says.
CREATE TABLE node_service_instances (
    cluster_id         rap_id NOT NULL REFERENCES clusters (cluster_id),
    node_id            rap_id NOT NULL REFERENCES nodes (node_id),
    service            rap_id NOT NULL,
    desired_state      text NOT NULL CHECK (desired_state IN ('enabled', 'disabled')),
    reported_state     text NOT NULL DEFAULT 'unknown'
                       CHECK (reported_state IN ('unknown', 'running', 'stopped', 'degraded', 'failed')),
    version            bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    reported_version   text NOT NULL DEFAULT '',
    last_heartbeat_at  timestamptz,
    metadata           jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, node_id, service)
);

-- Heartbeats: an append-only log (pruned by retention) of changes and
-- periodic samples, and the latest state per node (every heartbeat).
CREATE TABLE node_heartbeats (
    heartbeat_id   bigserial PRIMARY KEY,
    cluster_id     rap_id NOT NULL,
    node_id        rap_id NOT NULL,
    received_at    timestamptz NOT NULL,
    sent_at        timestamptz,
    health         text NOT NULL CHECK (health IN ('unknown', 'healthy', 'degraded', 'unhealthy')),
    degraded_mode  boolean NOT NULL DEFAULT false,
    agent_version  text NOT NULL DEFAULT '',
    payload        jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX node_heartbeats_received_at ON node_heartbeats (received_at);
CREATE INDEX node_heartbeats_node ON node_heartbeats (cluster_id, node_id, received_at);

CREATE TABLE node_heartbeat_latest (
    cluster_id         rap_id NOT NULL,
    node_id            rap_id NOT NULL,
    received_at        timestamptz NOT NULL,
    sent_at            timestamptz,
    health             text NOT NULL CHECK (health IN ('unknown', 'healthy', 'degraded', 'unhealthy')),
    degraded_mode      boolean NOT NULL DEFAULT false,
    agent_version      text NOT NULL DEFAULT '',
    capabilities       jsonb NOT NULL DEFAULT '[]'::jsonb,
    services           jsonb NOT NULL DEFAULT '[]'::jsonb,
    accepted_versions  jsonb NOT NULL DEFAULT '[]'::jsonb,
    heartbeat_count    bigint NOT NULL DEFAULT 1,
    -- When this node's last heartbeat went into the log: the log keeps
    -- changes (health, degraded mode, agent version) and one heartbeat per
    -- log interval, not every heartbeat.
    last_logged_at     timestamptz,
    PRIMARY KEY (cluster_id, node_id)
);

-- Storage/config nodes of a cluster's authority group.
CREATE TABLE storage_nodes (
    cluster_id  rap_id NOT NULL REFERENCES clusters (cluster_id),
    node_id     rap_id NOT NULL,
    address     text NOT NULL CHECK (length(address) BETWEEN 1 AND 255),
    region      text NOT NULL DEFAULT '',
    zone        text NOT NULL DEFAULT '',
    host        text NOT NULL DEFAULT '',
    role        text NOT NULL DEFAULT 'voter' CHECK (role IN ('voter', 'learner', 'cache', 'retired')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, node_id)
);

-- Partition observations reported by (or probed from) storage nodes.
-- Platform operators only.
CREATE TABLE cluster_partitions (
    observation_id    bigserial PRIMARY KEY,
    cluster_id        rap_id NOT NULL REFERENCES clusters (cluster_id),
    node_id           rap_id NOT NULL,
    view              text NOT NULL CHECK (view IN ('healthy', 'degraded', 'minority', 'fenced', 'unreachable')),
    reachable_voters  integer NOT NULL DEFAULT 0 CHECK (reachable_voters >= 0),
    total_voters      integer NOT NULL DEFAULT 0 CHECK (total_voters >= 0),
    authority_term    bigint NOT NULL DEFAULT 0,
    observed_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cluster_partitions_recent ON cluster_partitions (cluster_id, observed_at);

-- Signed snapshot shards published to the authority group.
CREATE TABLE snapshot_publications (
    cluster_id      rap_id NOT NULL REFERENCES clusters (cluster_id),
    scope           text NOT NULL CHECK (length(scope) BETWEEN 1 AND 80),
    version         bigint NOT NULL CHECK (version >= 1),
    authority_term  bigint NOT NULL CHECK (authority_term >= 1),
    content_hash    bytea NOT NULL CHECK (length(content_hash) = 32),
    header_hash     bytea NOT NULL CHECK (length(header_hash) = 32),
    fence_seq       bigint NOT NULL,
    published_by    text NOT NULL,
    published_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, scope, version)
);

-- Audit: every mutation and every refused mutation.
CREATE TABLE cluster_audit_events (
    event_id    bigserial PRIMARY KEY,
    cluster_id  text,
    actor       text NOT NULL,
    action      text NOT NULL CHECK (action ~ '^[a-z0-9._-]{1,64}$'),
    target      text NOT NULL DEFAULT '',
    result      text NOT NULL CHECK (result IN ('ok', 'refused', 'failed')),
    reason      text NOT NULL DEFAULT '',
    fence_term  bigint,
    fence_seq   bigint,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((fence_term IS NULL) = (fence_seq IS NULL))
);
CREATE INDEX cluster_audit_events_cluster ON cluster_audit_events (cluster_id, event_id);

-- Organization-visible logical endpoints (ingress points, egress pools).
CREATE TABLE org_endpoints (
    org_id      rap_id NOT NULL REFERENCES organizations (org_id),
    cluster_id  rap_id NOT NULL REFERENCES clusters (cluster_id),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    kind        text NOT NULL CHECK (kind IN ('ingress', 'egress')),
    role        rap_id NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, cluster_id, name)
);

-- Operators of the admin API and their bearer tokens (hashed).
CREATE TABLE admin_principals (
    principal_id  rap_id PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('platform-owner', 'platform-admin', 'org-admin')),
    org_id        rap_id REFERENCES organizations (org_id),
    name          text NOT NULL DEFAULT '',
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'org-admin') = (org_id IS NOT NULL))
);

CREATE TABLE admin_api_tokens (
    token_id      rap_id PRIMARY KEY,
    principal_id  rap_id NOT NULL REFERENCES admin_principals (principal_id),
    token_hash    bytea NOT NULL CHECK (length(token_hash) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
