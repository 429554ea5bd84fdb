//! `cluster_state_announced` and `node_health_announced`: the states the
//! watcher ([`crate::watch`]) last announced in the audit trail. A round
//! runs in one transaction under [`lock_round`], so two control planes
//! never announce the same change twice.

use crate::error::Result;
use sqlx::PgConnection;
use std::collections::BTreeMap;

/// The advisory lock key of a watcher round ("rapwatch").
pub const WATCH_LOCK_KEY: i64 = 0x7261_7077_6174_6368;

/// Takes the round's lock until the transaction ends; `false` when
/// another control plane holds it (that one does the round).
pub async fn lock_round(conn: &mut PgConnection) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(WATCH_LOCK_KEY)
        .fetch_one(conn)
        .await?)
}

/// The authority state last announced per cluster.
pub async fn cluster_states(conn: &mut PgConnection) -> Result<BTreeMap<String, String>> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT cluster_id, authority_state FROM cluster_state_announced")
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Records `state` as announced for `cluster_id`.
pub async fn set_cluster_state(
    conn: &mut PgConnection,
    cluster_id: &str,
    state: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO cluster_state_announced (cluster_id, authority_state) VALUES ($1, $2)
         ON CONFLICT (cluster_id) DO UPDATE
            SET authority_state = EXCLUDED.authority_state, changed_at = now()",
    )
    .bind(cluster_id)
    .bind(state)
    .execute(conn)
    .await?;
    Ok(())
}

/// The health state last announced per (cluster, node).
pub async fn node_states(conn: &mut PgConnection) -> Result<BTreeMap<(String, String), String>> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT cluster_id, node_id, state FROM node_health_announced")
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(cluster, node, state)| ((cluster, node), state))
        .collect())
}

/// Records the states of nodes as announced (one column per field).
pub async fn set_node_states(
    conn: &mut PgConnection,
    clusters: &[&str],
    nodes: &[&str],
    states: &[&str],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO node_health_announced (cluster_id, node_id, state)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])
         ON CONFLICT (cluster_id, node_id) DO UPDATE
            SET state = EXCLUDED.state, changed_at = now()",
    )
    .bind(clusters)
    .bind(nodes)
    .bind(states)
    .execute(conn)
    .await?;
    Ok(())
}
