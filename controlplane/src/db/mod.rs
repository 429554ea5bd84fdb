//! The persistence layer: the PostgreSQL pool, the schema migrations
//! (`migrations/` at the workspace root, embedded at build time), and one
//! module per group of tables holding every SQL statement of the control
//! plane. Services ([`crate::clusters`], [`crate::enrollment`], ...) keep
//! the policy; they call these functions, which take a
//! `&mut PgConnection` so that several of them compose in one
//! transaction. Rows are `#[derive(sqlx::FromRow)]` structs.
//!
//! What do we store? PostgreSQL is the source of truth; key material is
//! never here (key files, see [`crate::keys`]), secrets only as blake3.
//!
//! | table                      | module               | a row is ... / written by                                                  |
//! |----------------------------|----------------------|----------------------------------------------------------------------------|
//! | `organizations`            | [`orgs`]             | a tenant; `rapctl org create` (platform owner)                              |
//! | `org_endpoints`            | [`orgs`]             | an org's logical ingress/egress endpoint; `rapctl org endpoint add`         |
//! | `clusters`                 | [`clusters`]         | a cluster: CA cert, key fingerprints, signed trust root, cache replicas per node; `cluster.create`, `cluster cache-policy` |
//! | `cluster_trust_roots`      | [`clusters`]         | a trust root after genesis (one per signing-key rotation); `cluster rotate-signing-key`, the publisher's repair |
//! | `cluster_authority_terms`  | [`authority_terms`]  | one authority term (current: `ended_at IS NULL`) and its last fence seq; bootstrap, promotion and every fenced mutation; the ONLY writer |
//! | `storage_nodes`            | [`storage_nodes`]    | a storage node of the cluster (group member or cache replica) and its role; bootstrap, promotion (retire), rejoin, `cluster add-cache/remove-cache` |
//! | `cluster_partitions`       | [`partitions`]       | one partition observation of a storage node; `rapctl authority status`     |
//! | `snapshot_publications`    | [`snapshots`]        | a signed shard published under a fence, with its envelope; the publisher ([`crate::snapshots`]) |
//! | `snapshot_dirty`           | [`snapshots`]        | a scope a mutation touched since its last publication; mutations mark, the publisher unmarks |
//! | `nodes`                    | [`nodes`]            | a host-level node identity; join approval                                   |
//! | `cluster_memberships`      | [`nodes`], [`groups`] | node ↔ cluster (one active), its group, location (region, zone), `last_seen_at`; approval, revocation, group moves, `node set-location`, heartbeats |
//! | `node_identities`          | [`nodes`]            | a public key + certificate per (cluster, node); approval, renewal (rotated), revocation |
//! | `node_capabilities`        | [`nodes`], [`heartbeats`] | what a node reported it can do (never a permission); approval, heartbeats |
//! | `node_join_tokens`         | [`join`]             | a join token (hash only), scope and uses; `rapctl join-token`, joins        |
//! | `node_join_requests`       | [`join`]             | a join request and its review; agents and storage nodes join, operators review |
//! | `revoked_key_overrides`    | [`join`]             | an owner's one-time permission for a revoked key to join again              |
//! | `node_role_assignments`    | [`roles`]            | a node authorized for a role (per org); fenced assign/remove, revocation    |
//! | `node_groups`              | [`groups`]           | an inventory folder (tree, no cycles); `rapctl group`                       |
//! | `node_service_instances`   | [`workloads`], [`heartbeats`] | desired state (fenced, operators) and reported state (heartbeats) |
//! | `node_heartbeats`          | [`heartbeats`]       | a logged heartbeat (changes and periodic samples; pruned by retention)      |
//! | `node_heartbeat_latest`    | [`heartbeats`]       | a node's latest heartbeat; the heartbeat writer                             |
//! | `admin_principals`         | [`principals`]       | an operator of the admin API; init, `rapctl principal`                      |
//! | `admin_api_tokens`         | [`principals`]       | an API token (hash only), expiry, last use, revocation; `rapctl token`      |
//! | `console_sessions`         | [`console`]          | a web console sign-in (cookie hash, API token, CSRF token, idle/absolute expiry); [`crate::console`] |
//! | `cluster_audit_events`     | [`audit`]            | one audited mutation or refusal (append-only, kept forever); [`crate::audit`] |
//!
//! No table, but shared state all the same ([`coordination`]): a
//! transaction-scoped advisory lock per cluster serializes promotions
//! across control plane processes, and the channel `rap_cp_identities`
//! (`pg_notify` inside the revoking or renewing transaction, so only on
//! commit) tells every process which certificate serials to forget.
//!
//! Reads that join several tables live with the table they are about
//! (the node overview in [`nodes`], an org's serving nodes in [`orgs`]).

pub mod announced;
pub mod audit;
pub mod authority_terms;
pub mod clusters;
pub mod console;
pub mod coordination;
pub mod groups;
pub mod heartbeats;
pub mod join;
pub mod nodes;
pub mod orgs;
pub mod partitions;
pub mod principals;
pub mod roles;
pub mod snapshots;
pub mod storage_nodes;
pub mod workloads;

use crate::error::Result;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// The embedded migrations (forward-only, numbered).
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Opens a pool to `url` (not yet migrated).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await?)
}

/// Applies every pending migration; returns how many were applied.
pub async fn migrate(pool: &PgPool) -> Result<usize> {
    let before: i64 = applied(pool).await?;
    MIGRATOR.run(pool).await?;
    let after: i64 = applied(pool).await?;
    Ok(usize::try_from(after - before).unwrap_or(0))
}

/// One round trip to the database (`SELECT 1`), for readiness checks.
pub async fn ping(pool: &PgPool) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

/// How many migrations this binary knows.
pub fn known_migrations() -> usize {
    MIGRATOR.iter().count()
}

async fn applied(pool: &PgPool) -> Result<i64> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE tablename = '_sqlx_migrations')",
    )
    .fetch_one(pool)
    .await?;
    if !exists {
        return Ok(0);
    }
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?,
    )
}
