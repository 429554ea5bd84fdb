//! Nodes and what they hold in a cluster: `nodes` (host-level identities),
//! `cluster_memberships` (node ↔ cluster, at most one active),
//! `node_identities` (public key and certificate per cluster and node;
//! never a private key) and `node_capabilities` (what a node reported it
//! can do; never a permission).

use crate::error::Result;
use sqlx::PgConnection;

/// A node of a cluster as the inventory shows it: its newest membership,
/// its active (else newest) identity, last heartbeat, capabilities and
/// active roles.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct NodeOverview {
    /// The cluster.
    pub cluster_id: String,
    /// The node id.
    pub node_id: String,
    /// `active`, `disabled` or `revoked`.
    pub membership_status: String,
    /// `active`, `rotated`, `revoked`, or `none`.
    pub identity_status: String,
    /// Serial of that identity's certificate (empty without one).
    pub certificate_serial: String,
    /// Its expiry, Unix milliseconds (0 without one).
    pub certificate_not_after_unix_ms: i64,
    /// The membership's group (empty for none).
    pub group_id: String,
    /// Last heartbeat, Unix milliseconds (0 for never).
    pub last_heartbeat_unix_ms: i64,
    /// Health of the last heartbeat.
    pub health: String,
    /// `[{"name", "detail"}]`, by name.
    pub capabilities: serde_json::Value,
    /// Active roles, `role` or `role@org`.
    pub roles: Vec<String>,
    /// Where it lives: region ('' when unknown).
    pub region: String,
    /// Where it lives: zone ('' when unknown).
    pub zone: String,
}

const NODE_QUERY: &str = "
    SELECT m.cluster_id, m.node_id, m.membership_status,
           coalesce(i.identity_status, 'none') AS identity_status,
           coalesce(i.certificate_serial, '') AS certificate_serial,
           coalesce((extract(epoch FROM i.certificate_not_after) * 1000)::bigint, 0)
               AS certificate_not_after_unix_ms,
           coalesce(m.group_id, '') AS group_id,
           coalesce((extract(epoch FROM h.received_at) * 1000)::bigint, 0) AS last_heartbeat_unix_ms,
           coalesce(h.health, 'unknown') AS health,
           coalesce((SELECT jsonb_agg(jsonb_build_object('name', c.capability, 'detail', c.detail) ORDER BY c.capability)
                       FROM node_capabilities c WHERE c.cluster_id = m.cluster_id AND c.node_id = m.node_id), '[]'::jsonb)
               AS capabilities,
           coalesce((SELECT array_agg(r.role || coalesce('@' || r.organization_id, '') ORDER BY r.role)
                       FROM node_role_assignments r
                      WHERE r.cluster_id = m.cluster_id AND r.node_id = m.node_id AND r.status = 'active'), '{}')
               AS roles,
           m.region, m.zone
      FROM cluster_memberships m
      LEFT JOIN LATERAL (SELECT * FROM node_identities i
                          WHERE i.cluster_id = m.cluster_id AND i.node_id = m.node_id
                          ORDER BY (i.identity_status = 'active') DESC, i.identity_id DESC LIMIT 1) i ON true
      LEFT JOIN node_heartbeat_latest h ON h.cluster_id = m.cluster_id AND h.node_id = m.node_id
     WHERE m.membership_id = (SELECT max(m2.membership_id) FROM cluster_memberships m2
                               WHERE m2.cluster_id = m.cluster_id AND m2.node_id = m.node_id)";

/// A page of the nodes of `cluster_id` (of every cluster when empty), by
/// (cluster id, node id) after `after`.
pub async fn list(
    conn: &mut PgConnection,
    cluster_id: &str,
    after: (&str, &str),
    limit: i64,
) -> Result<Vec<NodeOverview>> {
    Ok(sqlx::query_as(&format!(
        "{NODE_QUERY} AND ($1 = '' OR m.cluster_id = $1) AND (m.cluster_id, m.node_id) > ($2, $3)
          ORDER BY m.cluster_id, m.node_id LIMIT $4"
    ))
    .bind(cluster_id)
    .bind(after.0)
    .bind(after.1)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// One node of a cluster.
pub async fn get(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
) -> Result<Option<NodeOverview>> {
    Ok(sqlx::query_as(&format!(
        "{NODE_QUERY} AND m.cluster_id = $1 AND m.node_id = $2"
    ))
    .bind(cluster_id)
    .bind(node_id)
    .fetch_optional(conn)
    .await?)
}

/// Revokes the node's active and rotated identities in the cluster;
/// returns their certificate serials.
pub async fn revoke_identities(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "UPDATE node_identities SET identity_status = 'revoked', revoked_at = now()
          WHERE cluster_id = $1 AND node_id = $2 AND identity_status IN ('active', 'rotated')
          RETURNING certificate_serial",
    )
    .bind(cluster_id)
    .bind(node_id)
    .fetch_all(conn)
    .await?)
}

/// Revokes the node's memberships in the cluster that are not revoked
/// yet; returns how many changed.
pub async fn revoke_memberships(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE cluster_memberships SET membership_status = 'revoked'
          WHERE cluster_id = $1 AND node_id = $2 AND membership_status <> 'revoked'",
    )
    .bind(cluster_id)
    .bind(node_id)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Whether the node ever had a membership in the cluster.
pub async fn has_membership(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM cluster_memberships WHERE cluster_id = $1 AND node_id = $2)",
    )
    .bind(cluster_id)
    .bind(node_id)
    .fetch_one(conn)
    .await?)
}

/// The id of the node's active membership, locked `FOR SHARE` until the
/// transaction ends (it cannot be revoked meanwhile).
pub async fn lock_active_membership(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT membership_id FROM cluster_memberships
          WHERE cluster_id = $1 AND node_id = $2 AND membership_status = 'active'
          FOR SHARE",
    )
    .bind(cluster_id)
    .bind(node_id)
    .fetch_optional(conn)
    .await?)
}

/// A revoked certificate, for the revocation list.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RevokedCertificate {
    /// The node.
    pub node_id: String,
    /// The certificate serial.
    pub certificate_serial: String,
    /// When it was revoked, Unix milliseconds.
    pub revoked_at_unix_ms: i64,
}

/// The cluster's revoked certificates, oldest first, at most `limit`.
pub async fn revoked_certificates(
    conn: &mut PgConnection,
    cluster_id: &str,
    limit: i64,
) -> Result<Vec<RevokedCertificate>> {
    Ok(sqlx::query_as(
        "SELECT node_id, certificate_serial,
                (extract(epoch FROM revoked_at) * 1000)::bigint AS revoked_at_unix_ms
           FROM node_identities WHERE cluster_id = $1 AND identity_status = 'revoked'
          ORDER BY identity_id LIMIT $2",
    )
    .bind(cluster_id)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Whether the node reported `capability` in the cluster.
pub async fn has_capability(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
    capability: &str,
) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM node_capabilities
                         WHERE cluster_id = $1 AND node_id = $2 AND capability = $3)",
    )
    .bind(cluster_id)
    .bind(node_id)
    .bind(capability)
    .fetch_one(conn)
    .await?)
}

/// Where a key's certificate was revoked (its oldest revoked identity).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RevokedKey {
    /// The cluster.
    pub cluster_id: String,
    /// The node.
    pub node_id: String,
}

/// The oldest revoked identity of the key `fingerprint`, if any.
pub async fn revoked_key(conn: &mut PgConnection, fingerprint: &str) -> Result<Option<RevokedKey>> {
    Ok(sqlx::query_as(
        "SELECT cluster_id, node_id FROM node_identities
          WHERE fingerprint = $1 AND identity_status = 'revoked' ORDER BY identity_id LIMIT 1",
    )
    .bind(fingerprint)
    .fetch_optional(conn)
    .await?)
}

/// One identity a key had.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct KeyHistoryRow {
    /// The cluster.
    pub cluster_id: String,
    /// The node.
    pub node_id: String,
    /// `node` or `storage`.
    pub kind: String,
    /// `active`, `rotated` or `revoked`.
    pub identity_status: String,
    /// Issued, Unix ms.
    pub issued_at_unix_ms: i64,
    /// Revoked, Unix ms.
    pub revoked_at_unix_ms: Option<i64>,
}

/// The identities the key `fingerprint` had, oldest first, at most
/// `limit`.
pub async fn key_history(
    conn: &mut PgConnection,
    fingerprint: &str,
    limit: i64,
) -> Result<Vec<KeyHistoryRow>> {
    Ok(sqlx::query_as(
        "SELECT cluster_id, node_id, kind, identity_status,
                (extract(epoch FROM created_at) * 1000)::bigint AS issued_at_unix_ms,
                (extract(epoch FROM revoked_at) * 1000)::bigint AS revoked_at_unix_ms
           FROM node_identities WHERE fingerprint = $1 ORDER BY identity_id LIMIT $2",
    )
    .bind(fingerprint)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Whether any cluster has an identity of `kind` for `node_id`.
pub async fn id_held_as(conn: &mut PgConnection, node_id: &str, kind: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM node_identities WHERE node_id = $1 AND kind = $2)",
    )
    .bind(node_id)
    .bind(kind)
    .fetch_one(conn)
    .await?)
}

/// Whether the node has an active identity in the cluster.
pub async fn has_active_identity(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM node_identities
                         WHERE cluster_id = $1 AND node_id = $2 AND identity_status = 'active')",
    )
    .bind(cluster_id)
    .bind(node_id)
    .fetch_one(conn)
    .await?)
}

/// A new active identity.
#[derive(Clone, Copy, Debug)]
pub struct NewIdentity<'a> {
    /// The cluster.
    pub cluster_id: &'a str,
    /// The node.
    pub node_id: &'a str,
    /// Ed25519 public key.
    pub public_key: &'a [u8],
    /// Its fingerprint.
    pub fingerprint: &'a str,
    /// Certificate serial (hex).
    pub certificate_serial: &'a str,
    /// Not before, Unix ms (fractional: the column keeps milliseconds).
    pub not_before_unix_ms: f64,
    /// Not after, Unix ms.
    pub not_after_unix_ms: f64,
    /// The certificate chain (PEM).
    pub certificate_pem: &'a str,
    /// `node` or `storage`.
    pub kind: &'a str,
}

/// Inserts an active identity.
pub async fn insert_identity(conn: &mut PgConnection, identity: NewIdentity<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO node_identities
             (cluster_id, node_id, public_key, fingerprint, certificate_serial,
              certificate_not_before, certificate_not_after, certificate_pem, kind)
         VALUES ($1, $2, $3, $4, $5, to_timestamp($6 / 1000), to_timestamp($7 / 1000), $8, $9)",
    )
    .bind(identity.cluster_id)
    .bind(identity.node_id)
    .bind(identity.public_key)
    .bind(identity.fingerprint)
    .bind(identity.certificate_serial)
    .bind(identity.not_before_unix_ms)
    .bind(identity.not_after_unix_ms)
    .bind(identity.certificate_pem)
    .bind(identity.kind)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts a node unless it exists.
pub async fn insert_node(conn: &mut PgConnection, node_id: &str, display_name: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO nodes (node_id, display_name) VALUES ($1, $2) ON CONFLICT (node_id) DO NOTHING",
    )
    .bind(node_id)
    .bind(display_name)
    .execute(conn)
    .await?;
    Ok(())
}

/// A node's standing in a cluster, as an approval checks it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Standing {
    /// `enrolled` or `revoked`.
    pub enrollment_status: String,
    /// It has an active membership in the cluster.
    pub member: bool,
    /// It has an active identity in the cluster.
    pub has_identity: bool,
}

/// A node's standing in a cluster (`RowNotFound` for an unknown node).
pub async fn standing(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
) -> Result<Standing> {
    Ok(sqlx::query_as(
        "SELECT enrollment_status,
                EXISTS (SELECT 1 FROM cluster_memberships
                         WHERE cluster_id = $2 AND node_id = $1 AND membership_status = 'active')
                    AS member,
                EXISTS (SELECT 1 FROM node_identities
                         WHERE cluster_id = $2 AND node_id = $1 AND identity_status = 'active')
                    AS has_identity
           FROM nodes WHERE node_id = $1",
    )
    .bind(node_id)
    .bind(cluster_id)
    .fetch_one(conn)
    .await?)
}

/// Inserts an active membership.
pub async fn insert_membership(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO cluster_memberships (cluster_id, node_id) VALUES ($1, $2)")
        .bind(cluster_id)
        .bind(node_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a capability the node reported when it joined.
pub async fn upsert_join_capability(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
    capability: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO node_capabilities (cluster_id, node_id, capability, detail, source)
         VALUES ($1, $2, $3, $4, 'join')
         ON CONFLICT (cluster_id, node_id, capability) DO UPDATE
           SET detail = EXCLUDED.detail, reported_at = now()",
    )
    .bind(cluster_id)
    .bind(node_id)
    .bind(capability)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// An active certificate as handed to its node.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ActiveCertificate {
    /// The chain (PEM).
    pub certificate_pem: String,
    /// Not after, Unix ms.
    pub not_after_unix_ms: i64,
}

/// An active identity's certificate, for the expiry report.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct IdentityExpiry {
    /// Its row (the report's tie-break).
    pub identity_id: i64,
    /// Its cluster.
    pub cluster_id: String,
    /// Its node.
    pub node_id: String,
    /// `node` or `storage`.
    pub kind: String,
    /// The certificate's serial (hex).
    pub certificate_serial: String,
    /// Not after, Unix ms.
    pub not_after_unix_ms: i64,
}

/// Active identities of `cluster_id` (every cluster when empty) whose
/// certificates end before `until_unix_ms`, soonest first, after
/// `after` (not after, identity id), at most `limit`.
pub async fn expiring_identities(
    conn: &mut PgConnection,
    cluster_id: &str,
    until_unix_ms: i64,
    after: (i64, i64),
    limit: i64,
) -> Result<Vec<IdentityExpiry>> {
    Ok(sqlx::query_as(
        "SELECT identity_id, cluster_id, node_id, kind, certificate_serial, not_after_unix_ms
           FROM (SELECT *, (extract(epoch FROM certificate_not_after) * 1000)::bigint
                               AS not_after_unix_ms
                   FROM node_identities
                  WHERE identity_status = 'active' AND ($1 = '' OR cluster_id = $1)) AS i
          WHERE not_after_unix_ms < $2 AND (not_after_unix_ms, identity_id) > ($3, $4)
          ORDER BY not_after_unix_ms, identity_id
          LIMIT $5",
    )
    .bind(cluster_id)
    .bind(until_unix_ms)
    .bind(after.0)
    .bind(after.1)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// The node's active certificate in the cluster for key `fingerprint`.
pub async fn active_certificate(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
    fingerprint: &str,
) -> Result<Option<ActiveCertificate>> {
    Ok(sqlx::query_as(
        "SELECT certificate_pem,
                (extract(epoch FROM certificate_not_after) * 1000)::bigint AS not_after_unix_ms
           FROM node_identities
          WHERE cluster_id = $1 AND node_id = $2 AND fingerprint = $3 AND identity_status = 'active'",
    )
    .bind(cluster_id)
    .bind(node_id)
    .bind(fingerprint)
    .fetch_optional(conn)
    .await?)
}

/// The public key of the node's active identity with certificate `serial`
/// and key `public_key` (`None` unless that certificate is the active one).
pub async fn active_key(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
    serial: &str,
    public_key: &[u8],
) -> Result<Option<Vec<u8>>> {
    Ok(sqlx::query_scalar(
        "SELECT public_key FROM node_identities
          WHERE cluster_id = $1 AND node_id = $2 AND certificate_serial = $3 AND public_key = $4
            AND identity_status = 'active'",
    )
    .bind(cluster_id)
    .bind(node_id)
    .bind(serial)
    .bind(public_key)
    .fetch_optional(conn)
    .await?)
}

/// Marks the active identity with certificate `serial` rotated; returns
/// whether exactly that one row changed.
pub async fn rotate_identity(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
    serial: &str,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE node_identities SET identity_status = 'rotated', rotated_at = now()
          WHERE cluster_id = $1 AND node_id = $2 AND certificate_serial = $3 AND identity_status = 'active'",
    )
    .bind(cluster_id)
    .bind(node_id)
    .bind(serial)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// An identity found by its certificate serial.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct IdentityBySerial {
    /// The cluster.
    pub cluster_id: String,
    /// The node.
    pub node_id: String,
    /// Its public key.
    pub public_key: Vec<u8>,
    /// `active`, `rotated` or `revoked`.
    pub identity_status: String,
}

/// The identity whose certificate has `serial`.
pub async fn identity_by_serial(
    conn: &mut PgConnection,
    serial: &str,
) -> Result<Option<IdentityBySerial>> {
    Ok(sqlx::query_as(
        "SELECT cluster_id::text AS cluster_id, node_id::text AS node_id, public_key,
                identity_status
           FROM node_identities WHERE certificate_serial = $1",
    )
    .bind(serial)
    .fetch_optional(conn)
    .await?)
}

/// A node of a cluster as the snapshot compiler sees it: an active or
/// disabled membership (revoked ones are in `trust/revocations`).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Member {
    /// The node.
    pub node_id: String,
    /// `active` or `disabled`.
    pub membership_status: String,
    /// Its group; empty for none.
    pub group_id: String,
    /// Where it lives: region ('' when unknown).
    pub region: String,
    /// Where it lives: zone ('' when unknown).
    pub zone: String,
}

/// Every active or disabled member of the cluster that is a node (not a
/// storage node), by node id.
pub async fn members(conn: &mut PgConnection, cluster_id: &str) -> Result<Vec<Member>> {
    Ok(sqlx::query_as(
        "SELECT m.node_id, m.membership_status, COALESCE(m.group_id, '') AS group_id,
                m.region, m.zone
           FROM cluster_memberships m
          WHERE m.cluster_id = $1 AND m.membership_status IN ('active', 'disabled')
            AND NOT EXISTS (SELECT 1 FROM node_identities i
                             WHERE i.cluster_id = m.cluster_id AND i.node_id = m.node_id
                               AND i.kind = 'storage')
          ORDER BY m.node_id",
    )
    .bind(cluster_id)
    .fetch_all(conn)
    .await?)
}

/// Records where the node's active membership in the cluster lives
/// (region and zone labels; '' for unknown); returns whether it has one.
pub async fn set_location(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
    region: &str,
    zone: &str,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE cluster_memberships SET region = $3, zone = $4
          WHERE cluster_id = $1 AND node_id = $2 AND membership_status = 'active'",
    )
    .bind(cluster_id)
    .bind(node_id)
    .bind(region)
    .bind(zone)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Active agent nodes of one cluster by health state
/// ([`crate::db::heartbeats::HEALTH_STATE_SQL`]); storage nodes are not
/// counted.
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct HealthCounts {
    /// The cluster.
    pub cluster_id: String,
    /// Active agent nodes.
    pub active: i64,
    /// Healthy, with a fresh heartbeat.
    pub healthy: i64,
    /// Degraded.
    pub degraded: i64,
    /// Unhealthy.
    pub unhealthy: i64,
    /// Heartbeating, saying "unknown".
    pub unknown: i64,
    /// Last heartbeat older than the stale window.
    pub stale: i64,
    /// Never sent a heartbeat.
    pub never_seen: i64,
}

/// Every active agent node (not storage nodes) with its health state
/// ([`crate::db::heartbeats::HEALTH_STATE_SQL`]; binds the stale window
/// as `$1`): columns `cluster_id`, `node_id`, `state`.
fn agent_states_sql() -> String {
    let state = crate::db::heartbeats::HEALTH_STATE_SQL;
    format!(
        "SELECT m.cluster_id, m.node_id, {state} AS state
           FROM cluster_memberships m
           LEFT JOIN node_heartbeat_latest h
                  ON h.cluster_id = m.cluster_id AND h.node_id = m.node_id
          WHERE m.membership_status = 'active'
            AND NOT EXISTS (SELECT 1 FROM node_identities i
                             WHERE i.cluster_id = m.cluster_id AND i.node_id = m.node_id
                               AND i.kind = 'storage')"
    )
}

/// [`HealthCounts`] of every cluster with an active agent node, a
/// heartbeat older than `stale_after` counting as stale.
pub async fn health_counts(
    conn: &mut PgConnection,
    stale_after: std::time::Duration,
) -> Result<Vec<HealthCounts>> {
    Ok(sqlx::query_as(&format!(
        "SELECT cluster_id, count(*) AS active,
                count(*) FILTER (WHERE state = 'healthy') AS healthy,
                count(*) FILTER (WHERE state = 'degraded') AS degraded,
                count(*) FILTER (WHERE state = 'unhealthy') AS unhealthy,
                count(*) FILTER (WHERE state = 'unknown') AS unknown,
                count(*) FILTER (WHERE state = 'stale') AS stale,
                count(*) FILTER (WHERE state = 'never_seen') AS never_seen
           FROM ({}) AS s
          GROUP BY cluster_id ORDER BY cluster_id",
        agent_states_sql()
    ))
    .bind(stale_after.as_secs_f64())
    .fetch_all(conn)
    .await?)
}

/// An active agent node's health state.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AgentState {
    /// The cluster.
    pub cluster_id: String,
    /// The node.
    pub node_id: String,
    /// `healthy`, `degraded`, `unhealthy`, `unknown`, `stale` or
    /// `never_seen`.
    pub state: String,
}

/// Every active agent node's [`AgentState`], by cluster and node; a
/// heartbeat older than `stale_after` is stale.
pub async fn agent_states(
    conn: &mut PgConnection,
    stale_after: std::time::Duration,
) -> Result<Vec<AgentState>> {
    Ok(sqlx::query_as(&format!(
        "{} ORDER BY m.cluster_id, m.node_id",
        agent_states_sql()
    ))
    .bind(stale_after.as_secs_f64())
    .fetch_all(conn)
    .await?)
}

/// Active certificates of one cluster that have ended or end soon.
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct CertificateCounts {
    /// The cluster.
    pub cluster_id: String,
    /// Ended.
    pub expired: i64,
    /// Ending within the window asked for.
    pub expiring: i64,
}

/// [`CertificateCounts`] of every cluster with an active identity ending
/// within `soon` that has run more than `overdue_percent` of its lifetime
/// (its holder is late renewing it), or has ended.
pub async fn certificate_counts(
    conn: &mut PgConnection,
    soon: std::time::Duration,
    overdue_percent: u32,
) -> Result<Vec<CertificateCounts>> {
    Ok(sqlx::query_as(
        "SELECT cluster_id,
                count(*) FILTER (WHERE certificate_not_after <= now()) AS expired,
                count(*) FILTER (WHERE certificate_not_after > now()) AS expiring
           FROM node_identities
          WHERE identity_status = 'active'
            AND certificate_not_after < now() + make_interval(secs => $1)
            AND now() >= certificate_not_before
                         + (certificate_not_after - certificate_not_before) * ($2::float8 / 100)
          GROUP BY cluster_id ORDER BY cluster_id",
    )
    .bind(soon.as_secs_f64())
    .bind(f64::from(overdue_percent))
    .fetch_all(conn)
    .await?)
}
