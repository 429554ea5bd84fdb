//! `storage_nodes`: the storage (config) nodes of each cluster: the
//! voters and learners of its authority group and its cache replicas, each
//! with its role (`voter`, `learner`, `cache`, `retired`).

use crate::error::Result;
use sqlx::PgConnection;

/// A storage node row.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StorageNode {
    /// The storage node's id.
    pub node_id: String,
    /// Its gRPC address, `host:port`.
    pub address: String,
    /// Failure domain: region.
    pub region: String,
    /// Failure domain: zone.
    pub zone: String,
    /// Failure domain: host.
    pub host: String,
    /// `voter`, `learner`, `cache` or `retired`.
    pub role: String,
}

/// A storage node as it is dialled: id and address.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StorageAddress {
    /// The storage node's id.
    pub node_id: String,
    /// Its gRPC address, `host:port`.
    pub address: String,
}

/// A cluster's voters and learners, voters first.
pub async fn peers(conn: &mut PgConnection, cluster_id: &str) -> Result<Vec<StorageAddress>> {
    Ok(sqlx::query_as(
        "SELECT node_id, address FROM storage_nodes
          WHERE cluster_id = $1 AND role IN ('voter', 'learner')
          ORDER BY role DESC, node_id",
    )
    .bind(cluster_id)
    .fetch_all(conn)
    .await?)
}

/// A cluster's voters, by node id.
pub async fn voters(conn: &mut PgConnection, cluster_id: &str) -> Result<Vec<StorageAddress>> {
    Ok(sqlx::query_as(
        "SELECT node_id, address FROM storage_nodes
          WHERE cluster_id = $1 AND role = 'voter' ORDER BY node_id",
    )
    .bind(cluster_id)
    .fetch_all(conn)
    .await?)
}

/// A cluster's group members (voters and learners; not caches, not
/// retired), by node id.
pub async fn members_by_id(
    conn: &mut PgConnection,
    cluster_id: &str,
) -> Result<Vec<StorageAddress>> {
    Ok(sqlx::query_as(
        "SELECT node_id, address FROM storage_nodes
          WHERE cluster_id = $1 AND role IN ('voter', 'learner') ORDER BY node_id",
    )
    .bind(cluster_id)
    .fetch_all(conn)
    .await?)
}

/// A cluster's storage nodes that are not retired, voters first.
pub async fn not_retired(conn: &mut PgConnection, cluster_id: &str) -> Result<Vec<StorageNode>> {
    Ok(sqlx::query_as(
        "SELECT node_id, address, region, zone, host, role FROM storage_nodes
          WHERE cluster_id = $1 AND role <> 'retired' ORDER BY role DESC, node_id",
    )
    .bind(cluster_id)
    .fetch_all(conn)
    .await?)
}

/// Every storage node of a cluster, by node id.
pub async fn all(conn: &mut PgConnection, cluster_id: &str) -> Result<Vec<StorageNode>> {
    Ok(sqlx::query_as(
        "SELECT node_id, address, region, zone, host, role FROM storage_nodes
          WHERE cluster_id = $1 ORDER BY node_id",
    )
    .bind(cluster_id)
    .fetch_all(conn)
    .await?)
}

/// One storage node of a cluster.
pub async fn get(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
) -> Result<Option<StorageNode>> {
    Ok(sqlx::query_as(
        "SELECT node_id, address, region, zone, host, role FROM storage_nodes
          WHERE cluster_id = $1 AND node_id = $2",
    )
    .bind(cluster_id)
    .bind(node_id)
    .fetch_optional(conn)
    .await?)
}

/// Records `node` as a voter of the cluster (inserted, or updated in place).
pub async fn upsert_voter(
    conn: &mut PgConnection,
    cluster_id: &str,
    node: &StorageNode,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO storage_nodes (cluster_id, node_id, address, region, zone, host, role)
         VALUES ($1, $2, $3, $4, $5, $6, 'voter')
         ON CONFLICT (cluster_id, node_id) DO UPDATE
           SET address = EXCLUDED.address, region = EXCLUDED.region, zone = EXCLUDED.zone,
               host = EXCLUDED.host, role = 'voter', updated_at = now()",
    )
    .bind(cluster_id)
    .bind(&node.node_id)
    .bind(&node.address)
    .bind(&node.region)
    .bind(&node.zone)
    .bind(&node.host)
    .execute(conn)
    .await?;
    Ok(())
}

/// Retires the voters and learners of a cluster that are not in `keep`;
/// returns the retired node ids.
pub async fn retire_all_but(
    conn: &mut PgConnection,
    cluster_id: &str,
    keep: &[String],
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "UPDATE storage_nodes SET role = 'retired', updated_at = now()
          WHERE cluster_id = $1 AND role IN ('voter', 'learner') AND NOT (node_id = ANY($2))
          RETURNING node_id",
    )
    .bind(cluster_id)
    .bind(keep)
    .fetch_all(conn)
    .await?)
}

/// Makes a retired storage node a voter again; returns whether it was
/// retired.
pub async fn unretire(conn: &mut PgConnection, cluster_id: &str, node_id: &str) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE storage_nodes SET role = 'voter', updated_at = now()
          WHERE cluster_id = $1 AND node_id = $2 AND role = 'retired'",
    )
    .bind(cluster_id)
    .bind(node_id)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Whether `node_id` is a storage node of any cluster, or named by a
/// usable storage join token.
pub async fn is_storage_id(conn: &mut PgConnection, node_id: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM storage_nodes WHERE node_id = $1)
             OR EXISTS (SELECT 1 FROM node_join_tokens
                         WHERE storage_node_id = $1 AND revoked_at IS NULL
                           AND used_count < max_uses AND expires_at > now())",
    )
    .bind(node_id)
    .fetch_one(conn)
    .await?)
}

/// Records `node` as a cache replica of the cluster: inserted, or its
/// address and labels updated when it is a cache or retired already.
/// Returns false (and changes nothing) when it is a voter or learner.
pub async fn upsert_cache(
    conn: &mut PgConnection,
    cluster_id: &str,
    node: &StorageNode,
) -> Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO storage_nodes (cluster_id, node_id, address, region, zone, host, role)
         VALUES ($1, $2, $3, $4, $5, $6, 'cache')
         ON CONFLICT (cluster_id, node_id) DO UPDATE
           SET address = EXCLUDED.address, region = EXCLUDED.region, zone = EXCLUDED.zone,
               host = EXCLUDED.host, role = 'cache', updated_at = now()
         WHERE storage_nodes.role IN ('cache', 'retired')",
    )
    .bind(cluster_id)
    .bind(&node.node_id)
    .bind(&node.address)
    .bind(&node.region)
    .bind(&node.zone)
    .bind(&node.host)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Retires a cache replica of the cluster; returns whether it was one.
pub async fn retire_cache(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE storage_nodes SET role = 'retired', updated_at = now()
          WHERE cluster_id = $1 AND node_id = $2 AND role = 'cache'",
    )
    .bind(cluster_id)
    .bind(node_id)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// The ids of the cluster's cache replicas, sorted.
pub async fn cache_ids(conn: &mut PgConnection, cluster_id: &str) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT node_id FROM storage_nodes
          WHERE cluster_id = $1 AND role = 'cache' ORDER BY node_id",
    )
    .bind(cluster_id)
    .fetch_all(conn)
    .await?)
}

/// How many voters each cluster with any has, by cluster id.
pub async fn voter_counts(conn: &mut PgConnection) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT cluster_id, count(*) FROM storage_nodes WHERE role = 'voter'
          GROUP BY cluster_id ORDER BY cluster_id",
    )
    .fetch_all(conn)
    .await?)
}
