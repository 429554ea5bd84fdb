//! `node_role_assignments`: the explicit authorization of a node for a
//! role per cluster (optionally per organization). Rows are never
//! deleted: a removal sets `status = 'removed'` with who, when and the
//! fence of the removal.

use crate::error::Result;
use sqlx::PgConnection;

/// Which assignment: cluster, node, role and organization (empty for
/// none).
#[derive(Clone, Copy, Debug)]
pub struct Key<'a> {
    /// The cluster.
    pub cluster_id: &'a str,
    /// The node.
    pub node_id: &'a str,
    /// The role.
    pub role: &'a str,
    /// The organization, empty for none.
    pub org_id: &'a str,
}

impl Key<'_> {
    fn org(&self) -> Option<&str> {
        Some(self.org_id).filter(|o| !o.is_empty())
    }
}

/// An active assignment as listed.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Assignment {
    /// Row id (the page order).
    pub assignment_id: i64,
    /// The cluster.
    pub cluster_id: String,
    /// The node.
    pub node_id: String,
    /// The role.
    pub role: String,
    /// The organization, empty for none.
    pub org_id: String,
    /// `active` or `removed`.
    pub status: String,
    /// Who assigned it.
    pub assigned_by: String,
}

/// What an insert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The assignment is recorded.
    Yes,
    /// The same assignment is active already.
    AlreadyActive,
}

/// Whether the same assignment is active.
pub async fn is_active(conn: &mut PgConnection, key: Key<'_>) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM node_role_assignments
                         WHERE cluster_id = $1 AND node_id = $2 AND role = $3
                           AND coalesce(organization_id, '') = $4 AND status = 'active')",
    )
    .bind(key.cluster_id)
    .bind(key.node_id)
    .bind(key.role)
    .bind(key.org_id)
    .fetch_one(conn)
    .await?)
}

/// Records an active assignment made under fence (`fence_term`,
/// `fence_seq`). An unknown organization is `NOT_FOUND`.
pub async fn insert(
    conn: &mut PgConnection,
    key: Key<'_>,
    assigned_by: &str,
    fence_term: i64,
    fence_seq: i64,
) -> Result<Inserted> {
    let inserted = sqlx::query(
        "INSERT INTO node_role_assignments
             (cluster_id, node_id, role, organization_id, assigned_by, fence_term, fence_seq)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(key.cluster_id)
    .bind(key.node_id)
    .bind(key.role)
    .bind(key.org())
    .bind(assigned_by)
    .bind(fence_term)
    .bind(fence_seq)
    .execute(conn)
    .await;
    match inserted {
        Ok(_) => Ok(Inserted::Yes),
        Err(sqlx::Error::Database(db))
            if db.code().as_deref() == Some("23505")
                && db.constraint() == Some("node_role_assignments_one_active") =>
        {
            Ok(Inserted::AlreadyActive)
        }
        Err(e) => Err(crate::auth::foreign_key_to_not_found(
            e,
            "organization",
            key.org_id,
        )),
    }
}

/// Removes the active assignment under fence (`fence_term`, `fence_seq`);
/// returns who had assigned it, `None` when none was active.
pub async fn remove(
    conn: &mut PgConnection,
    key: Key<'_>,
    removed_by: &str,
    fence_term: i64,
    fence_seq: i64,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "UPDATE node_role_assignments
            SET status = 'removed', removed_by = $5, removed_at = now(),
                fence_term = $6, fence_seq = $7
          WHERE cluster_id = $1 AND node_id = $2 AND role = $3
            AND coalesce(organization_id, '') = $4 AND status = 'active'
          RETURNING assigned_by",
    )
    .bind(key.cluster_id)
    .bind(key.node_id)
    .bind(key.role)
    .bind(key.org_id)
    .bind(removed_by)
    .bind(fence_term)
    .bind(fence_seq)
    .fetch_optional(conn)
    .await?)
}

/// Removes every active assignment of a node in a cluster (its
/// revocation); the rows keep the fence they were assigned with.
pub async fn remove_all_of_node(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
    removed_by: &str,
) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE node_role_assignments SET status = 'removed', removed_at = now(), removed_by = $3
          WHERE cluster_id = $1 AND node_id = $2 AND status = 'active'",
    )
    .bind(cluster_id)
    .bind(node_id)
    .bind(removed_by)
    .execute(conn)
    .await?
    .rows_affected())
}

/// A page of active assignments after `after` (by assignment id),
/// filtered by cluster and node when those are not empty.
pub async fn list_active(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Assignment>> {
    Ok(sqlx::query_as(
        "SELECT assignment_id, cluster_id, node_id, role,
                coalesce(organization_id, '') AS org_id, status, assigned_by
           FROM node_role_assignments
          WHERE status = 'active' AND ($1 = '' OR cluster_id = $1) AND ($2 = '' OR node_id = $2)
            AND assignment_id > $3
          ORDER BY assignment_id LIMIT $4",
    )
    .bind(cluster_id)
    .bind(node_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// An active role assignment as the snapshot compiler sees it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ActiveAssignment {
    /// The node.
    pub node_id: String,
    /// The role.
    pub role: String,
    /// The organization it serves; empty for cluster-wide.
    pub org_id: String,
}

/// Every active role assignment of the cluster, by (node, role, org).
pub async fn active_in_cluster(
    conn: &mut PgConnection,
    cluster_id: &str,
) -> Result<Vec<ActiveAssignment>> {
    Ok(sqlx::query_as(
        "SELECT node_id, role, COALESCE(organization_id, '') AS org_id
           FROM node_role_assignments
          WHERE cluster_id = $1 AND status = 'active'
          ORDER BY node_id, role, org_id",
    )
    .bind(cluster_id)
    .fetch_all(conn)
    .await?)
}

/// The active `(role, org)` assignments of one node (org empty for
/// cluster-wide), by role.
pub async fn active_of_node(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT role, COALESCE(organization_id, '') FROM node_role_assignments
          WHERE cluster_id = $1 AND node_id = $2 AND status = 'active'
          ORDER BY role, organization_id",
    )
    .bind(cluster_id)
    .bind(node_id)
    .fetch_all(conn)
    .await?)
}

/// The nodes holding any of `roles` in the cluster, by node id.
pub async fn holders_of(
    conn: &mut PgConnection,
    cluster_id: &str,
    roles: &[&str],
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT node_id FROM node_role_assignments
          WHERE cluster_id = $1 AND status = 'active' AND role = ANY($2::text[])
          ORDER BY node_id",
    )
    .bind(cluster_id)
    .bind(roles)
    .fetch_all(conn)
    .await?)
}

/// How one role of one cluster is covered.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Coverage {
    /// The cluster.
    pub cluster_id: String,
    /// The role.
    pub role: String,
    /// Nodes holding it (active assignments).
    pub holders: i64,
    /// Of those, healthy with a heartbeat fresher than the stale window.
    pub healthy_holders: i64,
}

/// [`Coverage`] of every role with an active assignment, by cluster and
/// role; a heartbeat older than `stale_after` is not healthy.
pub async fn coverage(
    conn: &mut PgConnection,
    stale_after: std::time::Duration,
) -> Result<Vec<Coverage>> {
    let state = crate::db::heartbeats::HEALTH_STATE_SQL;
    Ok(sqlx::query_as(&format!(
        "SELECT r.cluster_id, r.role, count(DISTINCT r.node_id) AS holders,
                count(DISTINCT r.node_id) FILTER (WHERE {state} = 'healthy') AS healthy_holders
           FROM node_role_assignments r
           LEFT JOIN node_heartbeat_latest h
                  ON h.cluster_id = r.cluster_id AND h.node_id = r.node_id
          WHERE r.status = 'active'
          GROUP BY r.cluster_id, r.role ORDER BY r.cluster_id, r.role"
    ))
    .bind(stale_after.as_secs_f64())
    .fetch_all(conn)
    .await?)
}
