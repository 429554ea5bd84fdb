//! `organizations` (tenants) and `org_endpoints` (their logical ingress
//! and egress endpoints), plus the org-safe counts of serving nodes.

use crate::error::Result;
use sqlx::PgConnection;
use std::time::Duration;

/// An organization row.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Organization {
    /// The org id.
    pub org_id: String,
    /// Display name.
    pub name: String,
    /// Creation time, Unix milliseconds.
    pub created_at_unix_ms: i64,
}

/// An endpoint row as the org view lists it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Endpoint {
    /// Endpoint name.
    pub name: String,
    /// `ingress` or `egress`.
    pub kind: String,
    /// The cluster serving it.
    pub cluster_id: String,
    /// The role whose nodes serve it.
    pub role: String,
}

/// A role the organization has nodes assigned to, in a cluster.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AssignedRole {
    /// The cluster.
    pub cluster_id: String,
    /// The role.
    pub role: String,
}

/// Serving nodes of a role for an organization in a cluster.
#[derive(Clone, Copy, Debug, sqlx::FromRow)]
pub struct Serving {
    /// Enrolled nodes with an active membership and assignment.
    pub serving: i64,
    /// Of them, those with a recent healthy heartbeat.
    pub healthy: i64,
}

/// Inserts an organization; `None` when the id is taken.
pub async fn insert(
    conn: &mut PgConnection,
    org_id: &str,
    name: &str,
) -> Result<Option<Organization>> {
    Ok(sqlx::query_as(
        "INSERT INTO organizations (org_id, name) VALUES ($1, $2)
         ON CONFLICT (org_id) DO NOTHING
         RETURNING org_id, name, (extract(epoch FROM created_at) * 1000)::bigint AS created_at_unix_ms",
    )
    .bind(org_id)
    .bind(name)
    .fetch_optional(conn)
    .await?)
}

/// A page of organizations after `after`, only `only` when given.
pub async fn list(
    conn: &mut PgConnection,
    only: Option<&str>,
    after: &str,
    limit: i64,
) -> Result<Vec<Organization>> {
    Ok(sqlx::query_as(
        "SELECT org_id, name, (extract(epoch FROM created_at) * 1000)::bigint AS created_at_unix_ms
           FROM organizations
          WHERE ($1::text IS NULL OR org_id = $1) AND org_id > $2
          ORDER BY org_id LIMIT $3",
    )
    .bind(only)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Whether the organization exists.
pub async fn exists(conn: &mut PgConnection, org_id: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM organizations WHERE org_id = $1)")
            .bind(org_id)
            .fetch_one(conn)
            .await?,
    )
}

/// The organization's status (`active`, `disabled`), `None` if unknown.
pub async fn status(conn: &mut PgConnection, org_id: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT status FROM organizations WHERE org_id = $1")
            .bind(org_id)
            .fetch_optional(conn)
            .await?,
    )
}

/// The organization's name, `None` if unknown.
pub async fn name(conn: &mut PgConnection, org_id: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT name FROM organizations WHERE org_id = $1")
            .bind(org_id)
            .fetch_optional(conn)
            .await?,
    )
}

/// How many endpoints the organization has.
pub async fn endpoint_count(conn: &mut PgConnection, org_id: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM org_endpoints WHERE org_id = $1")
            .bind(org_id)
            .fetch_one(conn)
            .await?,
    )
}

/// Inserts an endpoint; `false` when one of that name exists in the
/// cluster already.
pub async fn insert_endpoint(
    conn: &mut PgConnection,
    org_id: &str,
    endpoint: &Endpoint,
) -> Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO org_endpoints (org_id, cluster_id, name, kind, role)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (org_id, cluster_id, name) DO NOTHING",
    )
    .bind(org_id)
    .bind(&endpoint.cluster_id)
    .bind(&endpoint.name)
    .bind(&endpoint.kind)
    .bind(&endpoint.role)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// The organization's endpoints by cluster and name, at most `limit`.
pub async fn endpoints(conn: &mut PgConnection, org_id: &str, limit: i64) -> Result<Vec<Endpoint>> {
    Ok(sqlx::query_as(
        "SELECT name, kind, cluster_id, role FROM org_endpoints
          WHERE org_id = $1 ORDER BY cluster_id, name LIMIT $2",
    )
    .bind(org_id)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// The roles the organization has active assignments of, per cluster.
pub async fn assigned_roles(conn: &mut PgConnection, org_id: &str) -> Result<Vec<AssignedRole>> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT cluster_id, role FROM node_role_assignments
          WHERE organization_id = $1 AND status = 'active'
          ORDER BY role, cluster_id",
    )
    .bind(org_id)
    .fetch_all(conn)
    .await?)
}

/// Nodes serving `role` for `org_id` in `cluster_id` (assignments
/// restricted to the org or unrestricted, of enrolled nodes with an active
/// membership), and how many of them sent a `healthy` heartbeat within
/// `healthy_window`.
pub async fn serving(
    conn: &mut PgConnection,
    cluster_id: &str,
    role: &str,
    org_id: &str,
    healthy_window: Duration,
) -> Result<Serving> {
    Ok(sqlx::query_as(
        "SELECT count(DISTINCT a.node_id) AS serving,
                count(DISTINCT a.node_id) FILTER (
                    WHERE h.health = 'healthy'
                      AND h.received_at > now() - make_interval(secs => $4)) AS healthy
           FROM node_role_assignments a
           JOIN cluster_memberships m
             ON m.cluster_id = a.cluster_id AND m.node_id = a.node_id
            AND m.membership_status = 'active'
           JOIN nodes n ON n.node_id = a.node_id AND n.enrollment_status = 'enrolled'
           LEFT JOIN node_heartbeat_latest h
             ON h.cluster_id = a.cluster_id AND h.node_id = a.node_id
          WHERE a.cluster_id = $1 AND a.role = $2 AND a.status = 'active'
            AND (a.organization_id IS NULL OR a.organization_id = $3)",
    )
    .bind(cluster_id)
    .bind(role)
    .bind(org_id)
    .bind(healthy_window.as_secs_f64())
    .fetch_one(conn)
    .await?)
}

/// An organization endpoint in a cluster, as the snapshot compiler sees it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ClusterEndpoint {
    /// The organization.
    pub org_id: String,
    /// The endpoint's name.
    pub name: String,
    /// `ingress` or `egress`.
    pub kind: String,
    /// The role that serves it.
    pub role: String,
}

/// Every endpoint of an active organization in the cluster, by (org, name).
pub async fn endpoints_in_cluster(
    conn: &mut PgConnection,
    cluster_id: &str,
) -> Result<Vec<ClusterEndpoint>> {
    Ok(sqlx::query_as(
        "SELECT e.org_id, e.name, e.kind, e.role FROM org_endpoints e
           JOIN organizations o ON o.org_id = e.org_id
          WHERE e.cluster_id = $1 AND o.status = 'active'
          ORDER BY e.org_id, e.name",
    )
    .bind(cluster_id)
    .fetch_all(conn)
    .await?)
}
