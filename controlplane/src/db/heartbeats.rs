//! Heartbeats: `node_heartbeats` (an append-only log, pruned by retention,
//! of changes and one sample per log interval) and `node_heartbeat_latest`
//! (the latest state per node), plus what a heartbeat updates elsewhere:
//! `cluster_memberships.last_seen_at`, `node_service_instances.reported_*`
//! and heartbeat-sourced `node_capabilities`. Written in batches by the
//! heartbeat writer ([`crate::heartbeats`]); every statement takes
//! columns (one slice per column, equal lengths) and `UNNEST`s them.

use sqlx::PgConnection;
use std::time::Duration;

/// One column slice per field of a batch of heartbeats.
#[derive(Clone, Copy, Debug)]
pub struct LogColumns<'a> {
    /// Cluster ids.
    pub cluster: &'a [&'a str],
    /// Node ids.
    pub node: &'a [&'a str],
    /// Received at, Unix ms.
    pub received: &'a [i64],
    /// Sent at (agent clock), Unix ms.
    pub sent: &'a [Option<i64>],
    /// Health.
    pub health: &'a [&'a str],
    /// Degraded mode.
    pub degraded: &'a [bool],
    /// Agent version.
    pub version: &'a [&'a str],
    /// The whole heartbeat as JSON text.
    pub payload: &'a [&'a str],
    /// Whether a change of health, mode or version may be logged (the
    /// node's change budget).
    pub log_change: &'a [bool],
}

/// A heartbeat written to the log.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Logged {
    /// Cluster id.
    pub cluster_id: String,
    /// Node id.
    pub node_id: String,
    /// Received at, Unix ms.
    pub received_at_ms: i64,
}

/// Appends to the log the heartbeats that are changes (when `log_change`)
/// or the node's first sample in `log_interval`; returns what was logged.
pub async fn insert_log(
    conn: &mut PgConnection,
    columns: LogColumns<'_>,
    log_interval: Duration,
) -> Result<Vec<Logged>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO node_heartbeats
             (cluster_id, node_id, received_at, sent_at, health, degraded_mode,
              agent_version, payload)
         SELECT t.c, t.n, to_timestamp(t.r::double precision / 1000),
                to_timestamp(t.s::double precision / 1000), t.h, t.d, t.v, t.p::jsonb
           FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[],
                       $6::boolean[], $7::text[], $8::text[], $10::boolean[])
                AS t(c, n, r, s, h, d, v, p, lc)
           LEFT JOIN node_heartbeat_latest l ON l.cluster_id = t.c AND l.node_id = t.n
          WHERE l.node_id IS NULL OR l.last_logged_at IS NULL
             OR (t.lc AND (l.health <> t.h OR l.degraded_mode <> t.d OR l.agent_version <> t.v))
             OR l.last_logged_at <= to_timestamp(t.r::double precision / 1000)
                                    - make_interval(secs => $9)
         RETURNING cluster_id::text AS cluster_id, node_id::text AS node_id,
                   round(extract(epoch FROM received_at) * 1000)::bigint AS received_at_ms",
    )
    .bind(columns.cluster)
    .bind(columns.node)
    .bind(columns.received)
    .bind(columns.sent)
    .bind(columns.health)
    .bind(columns.degraded)
    .bind(columns.version)
    .bind(columns.payload)
    .bind(log_interval.as_secs_f64())
    .bind(columns.log_change)
    .fetch_all(conn)
    .await
}

/// The latest state of each node of a batch (one entry per node).
#[derive(Clone, Copy, Debug)]
pub struct LatestColumns<'a> {
    /// Cluster ids.
    pub cluster: &'a [&'a str],
    /// Node ids.
    pub node: &'a [&'a str],
    /// Received at, Unix ms.
    pub received: &'a [i64],
    /// Sent at, Unix ms.
    pub sent: &'a [Option<i64>],
    /// Health.
    pub health: &'a [&'a str],
    /// Degraded mode.
    pub degraded: &'a [bool],
    /// Agent version.
    pub version: &'a [&'a str],
    /// Capabilities (JSON text).
    pub capabilities: &'a [&'a str],
    /// Services (JSON text).
    pub services: &'a [&'a str],
    /// Accepted snapshot versions (JSON text).
    pub accepted_versions: &'a [&'a str],
    /// Heartbeats of the node in the batch.
    pub counts: &'a [i64],
    /// When the batch logged the node (Unix ms), if it did.
    pub logged_at: &'a [Option<i64>],
}

/// Upserts the latest state per node; `heartbeat_count` adds up and
/// `last_logged_at` moves only when the batch logged the node.
pub async fn upsert_latest(
    conn: &mut PgConnection,
    columns: LatestColumns<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO node_heartbeat_latest AS l
             (cluster_id, node_id, received_at, sent_at, health, degraded_mode, agent_version,
              capabilities, services, accepted_versions, heartbeat_count, last_logged_at)
         SELECT t.c, t.n, to_timestamp(t.r::double precision / 1000),
                to_timestamp(t.s::double precision / 1000), t.h, t.d, t.v,
                t.caps::jsonb, t.svcs::jsonb, t.avs::jsonb, t.k,
                to_timestamp(t.lg::double precision / 1000)
           FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[],
                       $6::boolean[], $7::text[], $8::text[], $9::text[], $10::text[],
                       $11::bigint[], $12::bigint[])
                AS t(c, n, r, s, h, d, v, caps, svcs, avs, k, lg)
         ON CONFLICT (cluster_id, node_id) DO UPDATE SET
             received_at = EXCLUDED.received_at,
             sent_at = EXCLUDED.sent_at,
             health = EXCLUDED.health,
             degraded_mode = EXCLUDED.degraded_mode,
             agent_version = EXCLUDED.agent_version,
             capabilities = EXCLUDED.capabilities,
             services = EXCLUDED.services,
             accepted_versions = EXCLUDED.accepted_versions,
             heartbeat_count = l.heartbeat_count + EXCLUDED.heartbeat_count,
             -- When the log step logged this node in this batch; else unchanged.
             last_logged_at = coalesce(EXCLUDED.last_logged_at, l.last_logged_at)",
    )
    .bind(columns.cluster)
    .bind(columns.node)
    .bind(columns.received)
    .bind(columns.sent)
    .bind(columns.health)
    .bind(columns.degraded)
    .bind(columns.version)
    .bind(columns.capabilities)
    .bind(columns.services)
    .bind(columns.accepted_versions)
    .bind(columns.counts)
    .bind(columns.logged_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves `last_seen_at` of the active memberships forward (never back).
pub async fn touch_memberships(
    conn: &mut PgConnection,
    cluster: &[&str],
    node: &[&str],
    received: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE cluster_memberships AS m
            SET last_seen_at = to_timestamp(t.r::double precision / 1000)
           FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS t(c, n, r)
          WHERE m.cluster_id = t.c AND m.node_id = t.n AND m.membership_status = 'active'
            AND (m.last_seen_at IS NULL
                 OR m.last_seen_at < to_timestamp(t.r::double precision / 1000))",
    )
    .bind(cluster)
    .bind(node)
    .bind(received)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reported service states, one entry per (node, service).
#[derive(Clone, Copy, Debug)]
pub struct ServiceColumns<'a> {
    /// Cluster ids.
    pub cluster: &'a [&'a str],
    /// Node ids.
    pub node: &'a [&'a str],
    /// Service names.
    pub service: &'a [&'a str],
    /// Reported states.
    pub state: &'a [&'a str],
    /// Reported versions.
    pub version: &'a [&'a str],
    /// Received at, Unix ms.
    pub received: &'a [i64],
}

/// Records reported service states where a service instance exists (a
/// heartbeat never creates one).
pub async fn report_services(
    conn: &mut PgConnection,
    columns: ServiceColumns<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE node_service_instances AS s
            SET reported_state = t.st,
                reported_version = t.v,
                last_heartbeat_at = to_timestamp(t.r::double precision / 1000)
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                       $6::bigint[]) AS t(c, n, svc, st, v, r)
          WHERE s.cluster_id = t.c AND s.node_id = t.n AND s.service = t.svc",
    )
    .bind(columns.cluster)
    .bind(columns.node)
    .bind(columns.service)
    .bind(columns.state)
    .bind(columns.version)
    .bind(columns.received)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reported capabilities, one entry per (node, capability).
#[derive(Clone, Copy, Debug)]
pub struct CapabilityColumns<'a> {
    /// Cluster ids.
    pub cluster: &'a [&'a str],
    /// Node ids.
    pub node: &'a [&'a str],
    /// Capability names.
    pub name: &'a [&'a str],
    /// Details.
    pub detail: &'a [&'a str],
    /// Received at, Unix ms.
    pub received: &'a [i64],
}

/// Records the capabilities of active members; unchanged rows are left
/// alone.
pub async fn report_capabilities(
    conn: &mut PgConnection,
    columns: CapabilityColumns<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO node_capabilities AS nc
             (cluster_id, node_id, capability, detail, source, reported_at)
         SELECT t.c, t.n, t.cap, t.d, 'heartbeat',
                to_timestamp(t.r::double precision / 1000)
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
                AS t(c, n, cap, d, r)
          WHERE EXISTS (SELECT 1 FROM cluster_memberships m
                         WHERE m.cluster_id = t.c AND m.node_id = t.n
                           AND m.membership_status = 'active')
            AND NOT EXISTS (SELECT 1 FROM node_capabilities o
                             WHERE o.cluster_id = t.c AND o.node_id = t.n
                               AND o.capability = t.cap AND o.detail = t.d
                               AND o.source = 'heartbeat')
         ON CONFLICT (cluster_id, node_id, capability) DO UPDATE SET
             detail = EXCLUDED.detail,
             source = EXCLUDED.source,
             reported_at = EXCLUDED.reported_at
          WHERE nc.detail IS DISTINCT FROM EXCLUDED.detail
             OR nc.source IS DISTINCT FROM EXCLUDED.source",
    )
    .bind(columns.cluster)
    .bind(columns.node)
    .bind(columns.name)
    .bind(columns.detail)
    .bind(columns.received)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes at most `chunk` log rows received before `cutoff_ms`; returns
/// how many.
pub async fn prune_chunk(
    conn: &mut PgConnection,
    cutoff_ms: i64,
    chunk: i64,
) -> crate::error::Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM node_heartbeats WHERE heartbeat_id IN (
             SELECT heartbeat_id FROM node_heartbeats
              WHERE received_at < to_timestamp($1::double precision / 1000)
              LIMIT $2)",
    )
    .bind(cutoff_ms)
    .bind(chunk)
    .execute(conn)
    .await?
    .rows_affected())
}

/// The state an overview counts for a node whose latest heartbeat row is
/// `h` (all NULL when it never sent one): `never_seen`, `stale` (older
/// than `$1` seconds, a float), else the health it reported. Queries that
/// use it bind the stale window as `$1`.
pub const HEALTH_STATE_SQL: &str = "CASE WHEN h.received_at IS NULL THEN 'never_seen'
          WHEN h.received_at <= now() - make_interval(secs => $1) THEN 'stale'
          ELSE h.health END";
