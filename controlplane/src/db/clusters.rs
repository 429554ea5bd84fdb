//! `clusters`: one row per cluster (public key fingerprints, the CA
//! certificate and the signed genesis trust root; never a private key).

use crate::error::Result;
use sqlx::PgConnection;

/// A cluster as its overview shows it, with its current authority row and
/// active membership count.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ClusterOverview {
    /// The cluster id.
    pub cluster_id: String,
    /// Display name.
    pub name: String,
    /// Fingerprint of the cluster CA.
    pub ca_fingerprint: String,
    /// Key id of the snapshot-signing key.
    pub signing_key_id: String,
    /// Creation time, Unix milliseconds.
    pub created_at_unix_ms: i64,
    /// Current authority term, if bootstrapped.
    pub authority_term: Option<i64>,
    /// Newest fence seq of the current term, if bootstrapped.
    pub last_seq: Option<i64>,
    /// Active memberships.
    pub active_nodes: i64,
}

/// The public key material of a new cluster row.
#[derive(Clone, Copy, Debug)]
pub struct NewCluster<'a> {
    /// The cluster id.
    pub cluster_id: &'a str,
    /// Display name.
    pub name: &'a str,
    /// Fingerprint of the cluster CA.
    pub ca_fingerprint: &'a str,
    /// The CA certificate (PEM).
    pub ca_cert_pem: &'a str,
    /// Key id of the snapshot-signing key (hex).
    pub signing_key_id: &'a str,
    /// The signed genesis trust root.
    pub trust_root: &'a [u8],
}

/// Whether the cluster exists.
pub async fn exists(conn: &mut PgConnection, cluster_id: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM clusters WHERE cluster_id = $1)")
            .bind(cluster_id)
            .fetch_one(conn)
            .await?,
    )
}

/// Inserts a cluster row.
pub async fn insert(conn: &mut PgConnection, cluster: NewCluster<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO clusters (cluster_id, name, ca_fingerprint, ca_cert_pem, signing_key_id, trust_root)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(cluster.cluster_id)
    .bind(cluster.name)
    .bind(cluster.ca_fingerprint)
    .bind(cluster.ca_cert_pem)
    .bind(cluster.signing_key_id)
    .bind(cluster.trust_root)
    .execute(conn)
    .await?;
    Ok(())
}

/// Cluster ids after `after`, in order, at most `limit`.
pub async fn list_ids(conn: &mut PgConnection, after: &str, limit: i64) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT cluster_id FROM clusters WHERE cluster_id > $1 ORDER BY cluster_id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Every cluster id, in order.
pub async fn all_ids(conn: &mut PgConnection) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT cluster_id FROM clusters ORDER BY cluster_id")
            .fetch_all(conn)
            .await?,
    )
}

/// The columns of [`ClusterOverview`], for a `WHERE` to follow.
const OVERVIEW_QUERY: &str = "
    SELECT c.cluster_id, c.name, c.ca_fingerprint, c.signing_key_id,
           (extract(epoch FROM c.created_at) * 1000)::bigint AS created_at_unix_ms,
           t.authority_term, t.last_seq,
           (SELECT count(*) FROM cluster_memberships m
             WHERE m.cluster_id = c.cluster_id AND m.membership_status = 'active')
             AS active_nodes
      FROM clusters c
      LEFT JOIN cluster_authority_terms t
             ON t.cluster_id = c.cluster_id AND t.ended_at IS NULL";

/// One cluster's overview.
pub async fn overview(
    conn: &mut PgConnection,
    cluster_id: &str,
) -> Result<Option<ClusterOverview>> {
    Ok(
        sqlx::query_as(&format!("{OVERVIEW_QUERY} WHERE c.cluster_id = $1"))
            .bind(cluster_id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Every cluster's overview, by cluster id.
pub async fn overviews(conn: &mut PgConnection) -> Result<Vec<ClusterOverview>> {
    Ok(
        sqlx::query_as(&format!("{OVERVIEW_QUERY} ORDER BY c.cluster_id"))
            .fetch_all(conn)
            .await?,
    )
}

/// The cluster's signed genesis trust root (`RowNotFound` for an unknown
/// cluster).
pub async fn trust_root(conn: &mut PgConnection, cluster_id: &str) -> Result<Vec<u8>> {
    Ok(
        sqlx::query_scalar("SELECT trust_root FROM clusters WHERE cluster_id = $1")
            .bind(cluster_id)
            .fetch_one(conn)
            .await?,
    )
}

/// The cluster's CA fingerprint (`RowNotFound` for an unknown cluster).
pub async fn ca_fingerprint(conn: &mut PgConnection, cluster_id: &str) -> Result<String> {
    Ok(
        sqlx::query_scalar("SELECT ca_fingerprint FROM clusters WHERE cluster_id = $1")
            .bind(cluster_id)
            .fetch_one(conn)
            .await?,
    )
}

/// A trust root after genesis.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RotatedRoot {
    /// Its generation (≥ 2).
    pub generation: i64,
    /// The encoded `SignedTrustRoot`.
    pub root: Vec<u8>,
}

/// The cluster's trust roots after genesis, oldest first.
pub async fn rotated_roots(conn: &mut PgConnection, cluster_id: &str) -> Result<Vec<RotatedRoot>> {
    Ok(sqlx::query_as(
        "SELECT generation, root FROM cluster_trust_roots
          WHERE cluster_id = $1 ORDER BY generation",
    )
    .bind(cluster_id)
    .fetch_all(conn)
    .await?)
}

/// Records the trust root of `generation` (idempotent: an existing row of
/// that generation is kept).
pub async fn insert_rotated_root(
    conn: &mut PgConnection,
    cluster_id: &str,
    generation: i64,
    root: &[u8],
    key_id_hex: &str,
    rotated_by: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO cluster_trust_roots (cluster_id, generation, root, key_id, rotated_by)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (cluster_id, generation) DO NOTHING",
    )
    .bind(cluster_id)
    .bind(generation)
    .bind(root)
    .bind(key_id_hex)
    .bind(rotated_by)
    .execute(conn)
    .await?;
    Ok(())
}

/// How many cache replicas hold each node's scopes in the cluster
/// (`None` for an unknown cluster).
pub async fn cache_replicas(conn: &mut PgConnection, cluster_id: &str) -> Result<Option<i32>> {
    Ok(
        sqlx::query_scalar("SELECT cache_replicas FROM clusters WHERE cluster_id = $1")
            .bind(cluster_id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Sets the cluster's cache replicas per node; returns whether the
/// cluster exists.
pub async fn set_cache_replicas(
    conn: &mut PgConnection,
    cluster_id: &str,
    replicas: i32,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE clusters SET cache_replicas = $2, updated_at = now() WHERE cluster_id = $1",
    )
    .bind(cluster_id)
    .bind(replicas)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}
