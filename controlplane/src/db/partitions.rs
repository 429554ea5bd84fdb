//! `cluster_partitions`: partition observations of storage nodes, one row
//! per answer (or silence) seen by `rapctl authority status` and by the
//! watcher's rounds ([`crate::watch`]), pruned after a retention.

use crate::error::Result;
use sqlx::PgConnection;

/// One observation to record.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// The storage node observed.
    pub node_id: &'a str,
    /// `healthy`, `degraded`, `minority`, `fenced` or `unreachable`.
    pub view: &'a str,
    /// Voters the node could reach.
    pub reachable_voters: i32,
    /// Voters in its group.
    pub total_voters: i32,
    /// The control plane's current term when observed.
    pub authority_term: i64,
}

/// Records one observation.
pub async fn insert(
    conn: &mut PgConnection,
    cluster_id: &str,
    observation: Observation<'_>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO cluster_partitions (cluster_id, node_id, view, reachable_voters, total_voters, authority_term)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(cluster_id)
    .bind(observation.node_id)
    .bind(observation.view)
    .bind(observation.reachable_voters)
    .bind(observation.total_voters)
    .bind(observation.authority_term)
    .execute(conn)
    .await?;
    Ok(())
}

/// A voter's newest recorded partition view.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct VoterView {
    /// The cluster.
    pub cluster_id: String,
    /// The voter.
    pub node_id: String,
    /// Its view.
    pub view: String,
    /// When recorded, Unix ms.
    pub observed_at_unix_ms: i64,
}

/// The newest view of every current voter (`storage_nodes.role =
/// 'voter'`) recorded within `fresh`, by cluster and node.
pub async fn voter_views(
    conn: &mut PgConnection,
    fresh: std::time::Duration,
) -> Result<Vec<VoterView>> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT ON (p.cluster_id, p.node_id) p.cluster_id, p.node_id, p.view,
                (extract(epoch FROM p.observed_at) * 1000)::bigint AS observed_at_unix_ms
           FROM cluster_partitions p
           JOIN storage_nodes s ON s.cluster_id = p.cluster_id AND s.node_id = p.node_id
          WHERE s.role = 'voter' AND p.observed_at > now() - make_interval(secs => $1)
          ORDER BY p.cluster_id, p.node_id, p.observed_at DESC",
    )
    .bind(fresh.as_secs_f64())
    .fetch_all(conn)
    .await?)
}

/// Deletes up to `limit` observations older than `older_than`; returns
/// how many.
pub async fn prune(
    conn: &mut PgConnection,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM cluster_partitions WHERE observation_id IN (
             SELECT observation_id FROM cluster_partitions
              WHERE observed_at < now() - make_interval(secs => $1)
              ORDER BY observed_at LIMIT $2)",
    )
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .execute(conn)
    .await?
    .rows_affected())
}
