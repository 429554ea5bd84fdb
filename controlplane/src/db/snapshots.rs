//! `snapshot_publications`: the signed snapshot shards the control plane
//! published to a cluster's authority group (one row per scope and
//! version, with its envelope), written in the fenced transaction that
//! published them. `snapshot_dirty`: the scopes a mutation touched since
//! their last publication, marked in the mutation's own transaction and
//! unmarked by the publishing one.

use crate::error::Result;
use sqlx::PgConnection;
use std::collections::BTreeMap;

/// The newest publication of a scope.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Latest {
    /// Its version.
    pub version: i64,
    /// The hash of its header (the next version's `prev_hash`).
    pub header_hash: Vec<u8>,
}

/// One published shard to record.
#[derive(Clone, Copy, Debug)]
pub struct Published<'a> {
    /// The scope, e.g. `trust/revocations`.
    pub scope: &'a str,
    /// Its version.
    pub version: i64,
    /// Hash of the body.
    pub content_hash: &'a [u8],
    /// Hash of the header.
    pub header_hash: &'a [u8],
    /// The encoded envelope.
    pub envelope: &'a [u8],
}

/// The fence and actor shared by the rows of one publication.
#[derive(Clone, Copy, Debug)]
pub struct PublishedUnder<'a> {
    /// The fence's term.
    pub authority_term: i64,
    /// The fence's seq.
    pub fence_seq: i64,
    /// The actor.
    pub published_by: &'a str,
}

/// Rows per `INSERT` of [`insert_many`].
const INSERT_CHUNK: usize = 1000;

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

/// The newest recorded publication of each of `scopes` in the cluster
/// (scopes never published are absent).
pub async fn latest_of(
    conn: &mut PgConnection,
    cluster_id: &str,
    scopes: &[String],
) -> Result<BTreeMap<String, Latest>> {
    let rows: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT DISTINCT ON (scope) scope, version, header_hash FROM snapshot_publications
          WHERE cluster_id = $1 AND scope = ANY($2) ORDER BY scope, version DESC",
    )
    .bind(cluster_id)
    .bind(scopes)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(scope, version, header_hash)| {
            (
                scope,
                Latest {
                    version,
                    header_hash,
                },
            )
        })
        .collect())
}

/// Records the shards of one publication, a thousand rows per statement.
pub async fn insert_many(
    conn: &mut PgConnection,
    cluster_id: &str,
    under: PublishedUnder<'_>,
    rows: &[Published<'_>],
) -> Result<()> {
    for chunk in rows.chunks(INSERT_CHUNK) {
        let scopes: Vec<&str> = chunk.iter().map(|r| r.scope).collect();
        let versions: Vec<i64> = chunk.iter().map(|r| r.version).collect();
        let content: Vec<&[u8]> = chunk.iter().map(|r| r.content_hash).collect();
        let headers: Vec<&[u8]> = chunk.iter().map(|r| r.header_hash).collect();
        let envelopes: Vec<&[u8]> = chunk.iter().map(|r| r.envelope).collect();
        sqlx::query(
            "INSERT INTO snapshot_publications
                 (cluster_id, scope, version, authority_term, content_hash, header_hash, fence_seq,
                  published_by, envelope)
             SELECT $1, s, v, $2, c, h, $3, $4, e
               FROM unnest($5::text[], $6::bigint[], $7::bytea[], $8::bytea[], $9::bytea[])
                    AS t(s, v, c, h, e)",
        )
        .bind(cluster_id)
        .bind(under.authority_term)
        .bind(under.fence_seq)
        .bind(under.published_by)
        .bind(&scopes)
        .bind(&versions)
        .bind(&content)
        .bind(&headers)
        .bind(&envelopes)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A recorded publication, as listed.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Recorded {
    /// The scope.
    pub scope: String,
    /// Its version.
    pub version: i64,
    /// The fence's term.
    pub authority_term: i64,
    /// Hash of the body.
    pub content_hash: Vec<u8>,
    /// Who published it.
    pub published_by: String,
    /// When, in Unix milliseconds.
    pub published_at_unix_ms: i64,
}

/// The newest publication of each scope of the cluster whose scope sorts
/// after `after`, by scope, at most `limit`.
pub async fn list_latest(
    conn: &mut PgConnection,
    cluster_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<Recorded>> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT ON (scope) scope, version, authority_term, content_hash, published_by,
                (extract(epoch FROM published_at) * 1000)::bigint AS published_at_unix_ms
           FROM snapshot_publications
          WHERE cluster_id = $1 AND scope > $2
          ORDER BY scope, version DESC
          LIMIT $3",
    )
    .bind(cluster_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// The envelope of the newest recorded publication of `scope`, if any
/// publication of it recorded one.
pub async fn latest_envelope(
    conn: &mut PgConnection,
    cluster_id: &str,
    scope: &str,
) -> Result<Option<Vec<u8>>> {
    Ok(sqlx::query_scalar(
        "SELECT envelope FROM snapshot_publications
          WHERE cluster_id = $1 AND scope = $2 AND envelope IS NOT NULL
          ORDER BY version DESC LIMIT 1",
    )
    .bind(cluster_id)
    .bind(scope)
    .fetch_optional(conn)
    .await?)
}

/// Marks `scopes` of the cluster dirty (idempotent).
pub async fn mark_dirty(
    conn: &mut PgConnection,
    cluster_id: &str,
    scopes: &[String],
) -> Result<()> {
    if scopes.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO snapshot_dirty (cluster_id, scope)
         SELECT $1, s FROM unnest($2::text[]) AS s
         ON CONFLICT (cluster_id, scope) DO UPDATE SET marked_at = clock_timestamp()",
    )
    .bind(cluster_id)
    .bind(scopes)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks the `node/<id>` scope of every active or disabled member dirty
/// (what a change of the storage nodes touches).
pub async fn mark_all_node_scopes_dirty(conn: &mut PgConnection, cluster_id: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO snapshot_dirty (cluster_id, scope)
         SELECT m.cluster_id, 'node/' || m.node_id FROM cluster_memberships m
          WHERE m.cluster_id = $1 AND m.membership_status IN ('active', 'disabled')
            AND NOT EXISTS (SELECT 1 FROM node_identities i
                             WHERE i.cluster_id = m.cluster_id AND i.node_id = m.node_id
                               AND i.kind = 'storage')
         ON CONFLICT (cluster_id, scope) DO UPDATE SET marked_at = clock_timestamp()",
    )
    .bind(cluster_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks every scope ever published in the cluster dirty: after a
/// promotion the new group starts from the survivors' state, and each
/// scope is published again where that state lacks what PostgreSQL holds
/// (numbered above the record; see `snapshots::publish`).
pub async fn mark_all_published_dirty(conn: &mut PgConnection, cluster_id: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO snapshot_dirty (cluster_id, scope)
         SELECT DISTINCT cluster_id, scope FROM snapshot_publications WHERE cluster_id = $1
         ON CONFLICT (cluster_id, scope) DO UPDATE SET marked_at = clock_timestamp()",
    )
    .bind(cluster_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// A dirty mark: the scope and when it was last marked (microseconds; a
/// mark made again gets a new time).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Mark {
    /// The scope.
    pub scope: String,
    /// When it was last marked, Unix microseconds.
    pub marked_at_us: i64,
}

/// The dirty marks of the cluster, by scope, at most `limit`.
pub async fn dirty(conn: &mut PgConnection, cluster_id: &str, limit: i64) -> Result<Vec<Mark>> {
    Ok(sqlx::query_as(
        "SELECT scope, (extract(epoch FROM marked_at) * 1000000)::bigint AS marked_at_us
           FROM snapshot_dirty WHERE cluster_id = $1 ORDER BY scope LIMIT $2",
    )
    .bind(cluster_id)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// The clusters that have dirty scopes.
pub async fn clusters_with_dirty(conn: &mut PgConnection) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT DISTINCT cluster_id FROM snapshot_dirty ORDER BY cluster_id")
            .fetch_all(conn)
            .await?,
    )
}

/// Removes exactly these marks: a scope marked again since they were read
/// (a later time) stays dirty, so a change committed while a publication
/// ran is never lost.
pub async fn unmark(conn: &mut PgConnection, cluster_id: &str, marks: &[Mark]) -> Result<()> {
    let scopes: Vec<&str> = marks.iter().map(|m| m.scope.as_str()).collect();
    let times: Vec<i64> = marks.iter().map(|m| m.marked_at_us).collect();
    sqlx::query(
        "DELETE FROM snapshot_dirty d
          USING unnest($2::text[], $3::bigint[]) AS m(scope, at)
          WHERE d.cluster_id = $1 AND d.scope = m.scope
            AND (extract(epoch FROM d.marked_at) * 1000000)::bigint = m.at",
    )
    .bind(cluster_id)
    .bind(&scopes)
    .bind(&times)
    .execute(conn)
    .await?;
    Ok(())
}

/// The scopes the cluster has published, sorted, at most `limit`.
pub async fn published_scopes(
    conn: &mut PgConnection,
    cluster_id: &str,
    limit: i64,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT scope FROM snapshot_publications
          WHERE cluster_id = $1 ORDER BY scope LIMIT $2",
    )
    .bind(cluster_id)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}
