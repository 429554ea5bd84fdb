//! `cluster_partitions`: partition observations of storage nodes, one row
//! per answer (or silence) seen by `rapctl authority status`.

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
