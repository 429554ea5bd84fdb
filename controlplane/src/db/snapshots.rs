//! `snapshot_publications`: the signed snapshot shards the control plane
//! published to a cluster's authority group (one row per scope and
//! version), written in the fenced transaction that published them.

use crate::error::Result;
use sqlx::PgConnection;

/// The newest publication of a scope.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Latest {
    /// Its version.
    pub version: i64,
    /// The hash of its header (the next version's `prev_hash`).
    pub header_hash: Vec<u8>,
}

/// A publication to record.
#[derive(Clone, Copy, Debug)]
pub struct Publication<'a> {
    /// The scope, e.g. `trust/revocations`.
    pub scope: &'a str,
    /// Its version.
    pub version: i64,
    /// The fence's term.
    pub authority_term: i64,
    /// The fence's seq.
    pub fence_seq: i64,
    /// Hash of the body.
    pub content_hash: &'a [u8],
    /// Hash of the header.
    pub header_hash: &'a [u8],
    /// The actor.
    pub published_by: &'a str,
}

/// The newest publication of `scope` in the cluster.
pub async fn latest(
    conn: &mut PgConnection,
    cluster_id: &str,
    scope: &str,
) -> Result<Option<Latest>> {
    Ok(sqlx::query_as(
        "SELECT version, header_hash FROM snapshot_publications
          WHERE cluster_id = $1 AND scope = $2 ORDER BY version DESC LIMIT 1",
    )
    .bind(cluster_id)
    .bind(scope)
    .fetch_optional(conn)
    .await?)
}

/// Records a publication.
pub async fn insert(
    conn: &mut PgConnection,
    cluster_id: &str,
    publication: Publication<'_>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO snapshot_publications
             (cluster_id, scope, version, authority_term, content_hash, header_hash, fence_seq, published_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(cluster_id)
    .bind(publication.scope)
    .bind(publication.version)
    .bind(publication.authority_term)
    .bind(publication.content_hash)
    .bind(publication.header_hash)
    .bind(publication.fence_seq)
    .bind(publication.published_by)
    .execute(conn)
    .await?;
    Ok(())
}
