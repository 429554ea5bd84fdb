//! `node_groups`: a cluster's inventory folders (a tree; the schema's
//! trigger refuses cycles) and the group column of `cluster_memberships`
//! (which folder a node sits in). Groups grant nothing.

use crate::error::Result;
use sqlx::PgConnection;

/// A group row.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Group {
    /// The group id.
    pub group_id: String,
    /// Its name.
    pub name: String,
    /// Its parent, if any.
    pub parent_group_id: Option<String>,
}

/// A node placed in a group.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Placement {
    /// The group.
    pub group_id: String,
    /// The node.
    pub node_id: String,
}

/// What moving a group under another did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reparented {
    /// Moved.
    Yes,
    /// The schema refused: the move would make a cycle.
    Cycle,
}

/// Whether the group exists.
pub async fn exists(conn: &mut PgConnection, cluster_id: &str, group_id: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM node_groups WHERE cluster_id = $1 AND group_id = $2)",
    )
    .bind(cluster_id)
    .bind(group_id)
    .fetch_one(conn)
    .await?)
}

/// One group.
pub async fn get(
    conn: &mut PgConnection,
    cluster_id: &str,
    group_id: &str,
) -> Result<Option<Group>> {
    Ok(sqlx::query_as(
        "SELECT group_id, name, parent_group_id FROM node_groups
          WHERE cluster_id = $1 AND group_id = $2",
    )
    .bind(cluster_id)
    .bind(group_id)
    .fetch_optional(conn)
    .await?)
}

/// The nodes with an active membership in the group, by id.
pub async fn member_ids(
    conn: &mut PgConnection,
    cluster_id: &str,
    group_id: &str,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT node_id FROM cluster_memberships
          WHERE cluster_id = $1 AND group_id = $2 AND membership_status = 'active'
          ORDER BY node_id",
    )
    .bind(cluster_id)
    .bind(group_id)
    .fetch_all(conn)
    .await?)
}

/// How many groups the cluster has.
pub async fn count(conn: &mut PgConnection, cluster_id: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM node_groups WHERE cluster_id = $1")
            .bind(cluster_id)
            .fetch_one(conn)
            .await?,
    )
}

/// Inserts a group named by its id; `false` when it exists. An unknown
/// parent is a foreign key violation (the caller maps it).
pub async fn insert(
    conn: &mut PgConnection,
    cluster_id: &str,
    group_id: &str,
    parent_group_id: Option<&str>,
) -> std::result::Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "INSERT INTO node_groups (cluster_id, group_id, name, parent_group_id)
         VALUES ($1, $2, $3, $4) ON CONFLICT (cluster_id, group_id) DO NOTHING",
    )
    .bind(cluster_id)
    .bind(group_id)
    .bind(group_id)
    .bind(parent_group_id)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// The group of the node's active membership: `None` without one,
/// `Some(None)` when it sits in no group.
pub async fn group_of_node(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
) -> Result<Option<Option<String>>> {
    Ok(sqlx::query_scalar(
        "SELECT group_id FROM cluster_memberships
          WHERE cluster_id = $1 AND node_id = $2 AND membership_status = 'active'",
    )
    .bind(cluster_id)
    .bind(node_id)
    .fetch_optional(conn)
    .await?)
}

/// Puts the node's active membership in `group_id`.
pub async fn place_node(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
    group_id: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE cluster_memberships SET group_id = $3
          WHERE cluster_id = $1 AND node_id = $2 AND membership_status = 'active'",
    )
    .bind(cluster_id)
    .bind(node_id)
    .bind(group_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Serializes moves of one cluster's groups until the transaction ends,
/// so the cycle trigger's view of the tree is not stale.
pub async fn lock_tree(conn: &mut PgConnection, cluster_id: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('rap:node_groups:' || $1))")
        .bind(cluster_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The group's parent, its row locked: `None` for an unknown group.
pub async fn lock_parent(
    conn: &mut PgConnection,
    cluster_id: &str,
    group_id: &str,
) -> Result<Option<Option<String>>> {
    Ok(sqlx::query_scalar(
        "SELECT parent_group_id FROM node_groups
          WHERE cluster_id = $1 AND group_id = $2 FOR UPDATE",
    )
    .bind(cluster_id)
    .bind(group_id)
    .fetch_optional(conn)
    .await?)
}

/// Moves a group under `parent_group_id`; a cycle (refused by the
/// schema's trigger, [`is_group_cycle`]) is
/// [`Reparented::Cycle`].
pub async fn set_parent(
    conn: &mut PgConnection,
    cluster_id: &str,
    group_id: &str,
    parent_group_id: &str,
) -> Result<Reparented> {
    let updated = sqlx::query(
        "UPDATE node_groups SET parent_group_id = $3
          WHERE cluster_id = $1 AND group_id = $2",
    )
    .bind(cluster_id)
    .bind(group_id)
    .bind(parent_group_id)
    .execute(conn)
    .await;
    match updated {
        Ok(_) => Ok(Reparented::Yes),
        Err(e) if is_group_cycle(&e) => Ok(Reparented::Cycle),
        Err(e) => Err(e.into()),
    }
}

/// The cluster's groups by id, at most `limit`.
pub async fn list(conn: &mut PgConnection, cluster_id: &str, limit: i64) -> Result<Vec<Group>> {
    Ok(sqlx::query_as(
        "SELECT group_id, name, parent_group_id FROM node_groups
          WHERE cluster_id = $1 ORDER BY group_id LIMIT $2",
    )
    .bind(cluster_id)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Every node of the cluster placed in a group (active memberships), by
/// group and node.
pub async fn placements(conn: &mut PgConnection, cluster_id: &str) -> Result<Vec<Placement>> {
    Ok(sqlx::query_as(
        "SELECT group_id, node_id FROM cluster_memberships
          WHERE cluster_id = $1 AND group_id IS NOT NULL AND membership_status = 'active'
          ORDER BY group_id, node_id",
    )
    .bind(cluster_id)
    .fetch_all(conn)
    .await?)
}

/// The HINT the cycle trigger raises with.
pub const GROUP_CYCLE_HINT: &str = "rap:group_cycle";

/// Is `error` the cycle trigger's refusal?
pub fn is_group_cycle(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some_and(|pg| pg.hint() == Some(GROUP_CYCLE_HINT))
}
