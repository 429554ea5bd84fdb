//! `node_service_instances`: per (cluster, node, service), what the
//! control plane wants (`desired_state`, `version`; fenced writes by
//! operators) next to what the agent reports (`reported_state`, written
//! by heartbeats, see [`crate::db::heartbeats`]).

use crate::error::Result;
use sqlx::PgConnection;

/// A service instance.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Instance {
    /// The cluster.
    pub cluster_id: String,
    /// The node.
    pub node_id: String,
    /// The service name.
    pub service: String,
    /// `enabled` or `disabled`.
    pub desired_state: String,
    /// What the agent last reported.
    pub reported_state: String,
    /// Changes of the desired state, from 1.
    pub version: i64,
}

/// The desired state of the instance, locked until the transaction ends;
/// `None` when there is no instance yet.
pub async fn lock_desired_state(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
    service: &str,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT desired_state FROM node_service_instances
          WHERE cluster_id = $1 AND node_id = $2 AND service = $3 FOR UPDATE",
    )
    .bind(cluster_id)
    .bind(node_id)
    .bind(service)
    .fetch_optional(conn)
    .await?)
}

/// How many service instances the node has.
pub async fn count_of_node(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM node_service_instances WHERE cluster_id = $1 AND node_id = $2",
    )
    .bind(cluster_id)
    .bind(node_id)
    .fetch_one(conn)
    .await?)
}

/// Sets the desired state, creating the instance on first use; the
/// version is bumped only when the state changes.
pub async fn set_desired_state(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
    service: &str,
    desired_state: &str,
) -> Result<Instance> {
    Ok(sqlx::query_as(
        "INSERT INTO node_service_instances (cluster_id, node_id, service, desired_state)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (cluster_id, node_id, service) DO UPDATE
           SET desired_state = EXCLUDED.desired_state,
               version = node_service_instances.version
                         + CASE WHEN node_service_instances.desired_state = EXCLUDED.desired_state
                                THEN 0 ELSE 1 END,
               updated_at = now()
         RETURNING cluster_id, node_id, service, desired_state, reported_state, version",
    )
    .bind(cluster_id)
    .bind(node_id)
    .bind(service)
    .bind(desired_state)
    .fetch_one(conn)
    .await?)
}

/// A page of a cluster's instances (of one node when `node_id` is not
/// empty), by node and service after (`after_node`, `after_service`).
pub async fn list(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
    after_node: &str,
    after_service: &str,
    limit: i64,
) -> Result<Vec<Instance>> {
    Ok(sqlx::query_as(
        "SELECT cluster_id, node_id, service, desired_state, reported_state, version
           FROM node_service_instances
          WHERE cluster_id = $1 AND ($2 = '' OR node_id = $2)
            AND (node_id, service) > ($3, $4)
          ORDER BY node_id, service LIMIT $5",
    )
    .bind(cluster_id)
    .bind(node_id)
    .bind(after_node)
    .bind(after_service)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// A desired workload as the snapshot compiler sees it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Desired {
    /// The node.
    pub node_id: String,
    /// The service.
    pub service: String,
    /// `enabled` or `disabled`.
    pub desired_state: String,
    /// Bumped on every change of the desired state.
    pub version: i64,
}

/// Every desired workload of the cluster, by (node, service).
pub async fn desired_in_cluster(conn: &mut PgConnection, cluster_id: &str) -> Result<Vec<Desired>> {
    Ok(sqlx::query_as(
        "SELECT node_id, service, desired_state, version FROM node_service_instances
          WHERE cluster_id = $1 ORDER BY node_id, service",
    )
    .bind(cluster_id)
    .fetch_all(conn)
    .await?)
}
