//! Config distribution, control-plane side: compile need-to-know shards
//! from PostgreSQL ([`compile`]), publish them signed under a fence
//! ([`publish`]), and keep them published.
//!
//! * A mutation marks the scopes it touches dirty in its own transaction
//!   ([`mark`], [`mark_node_change`], [`mark_placement_change`];
//!   `snapshot_dirty`) and notifies channel
//!   [`DIRTY_CHANNEL`] on commit.
//! * The publisher task ([`run_publisher`]) wakes on that notification (or
//!   every [`PUBLISH_POLL_INTERVAL`]) and publishes each cluster's dirty
//!   scopes in one fenced transaction; every [`SHARD_REFRESH_INTERVAL`] it
//!   also re-signs shards that would expire within
//!   [`SHARD_REFRESH_BEFORE_EXPIRY`](crate::limits::SHARD_REFRESH_BEFORE_EXPIRY).
//! * Operators: `PublishSnapshot` (dirty and changed scopes, or named
//!   ones), `GetSnapshot` (the group's newest envelope of a scope),
//!   `ListSnapshots` (what PostgreSQL recorded).
//!
//! Several control planes may run the publisher at once: publications of
//! a cluster serialize on its authority row, and the second finds nothing
//! dirty.

pub mod compile;
pub mod placement;
pub mod publish;
pub mod rotate;

use crate::audit::Action;
use crate::auth::Principal;
use crate::clusters::PreloadedKeys;
use crate::context::Context;
use crate::db;
use crate::error::{Error, Result};
use crate::fencing;
use crate::limits::{PUBLISH_POLL_INTERVAL, SHARD_REFRESH_INTERVAL};
use crate::page::Page;
pub use publish::{Asked, Mode, Outcome, Publisher};
use rap_proto::envelope::Scope;
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::pb;
pub use rotate::rotate_signing_key;
use sqlx::PgConnection;
use tracing::Instrument;

/// Audit action of a publication.
pub const ACTION_PUBLISH: &str = "snapshot.publish";
/// Audit action of a (refused) read of a published shard.
pub const ACTION_GET: &str = "snapshot.get";
/// Audit action of a (refused) listing.
pub const ACTION_LIST: &str = "snapshot.list";
/// The actor of the publisher task's publications.
pub const PUBLISHER_ACTOR: &str = "control-plane:publisher";
/// Channel notified (with the cluster id) when a transaction that marked
/// scopes dirty commits.
pub const DIRTY_CHANNEL: &str = "rap_cp_snapshots";

/// Marks `scopes` of `cluster_id` dirty in the caller's transaction and
/// wakes the publishers when it commits.
pub async fn mark(conn: &mut PgConnection, cluster_id: &str, scopes: &[Scope]) -> Result<()> {
    let scopes: Vec<String> = scopes.iter().map(Scope::to_string).collect();
    db::snapshots::mark_dirty(conn, cluster_id, &scopes).await?;
    db::coordination::notify(conn, DIRTY_CHANNEL, cluster_id).await
}

/// The `cache/` scopes of every cache replica of the cluster.
async fn cache_scopes(conn: &mut PgConnection, cluster_id: &str) -> Result<Vec<Scope>> {
    db::storage_nodes::cache_ids(conn, cluster_id)
        .await?
        .into_iter()
        .map(|id| Ok(Scope::Cache(NodeId::new(id)?)))
        .collect()
}

/// The scopes a change of `node`'s roles, group or membership touches: its
/// own `node/`, the `role/` and `org/../services` scopes of `roles`
/// (`(role, org)` pairs; the roles it had or has), when one of them is a
/// mesh role the `peers/` scope of every mesh node (they list it), and
/// the `cache/` scope of every cache replica (a cache holds what its nodes
/// read: a node gaining role `r` brings `role/r` to its caches).
pub async fn mark_node_change(
    conn: &mut PgConnection,
    cluster_id: &str,
    node_id: &str,
    roles: &[(String, String)],
) -> Result<()> {
    let mut scopes = vec![format!("node/{node_id}").parse::<Scope>()?];
    scopes.extend(cache_scopes(conn, cluster_id).await?);
    let mut mesh = false;
    for (role, org) in roles {
        scopes.push(format!("role/{role}").parse()?);
        if !org.is_empty() {
            scopes.push(format!("org/{org}/services").parse()?);
        }
        mesh |= crate::roles::is_mesh_role(role);
    }
    if mesh {
        scopes.push(format!("peers/{node_id}").parse()?);
        for holder in db::roles::holders_of(conn, cluster_id, crate::roles::MESH_ROLES).await? {
            scopes.push(format!("peers/{holder}").parse()?);
        }
    }
    scopes.sort();
    scopes.dedup();
    mark(conn, cluster_id, &scopes).await
}

/// The scopes a change of cache placement touches (a cache replica added
/// or removed, the cluster's cache replicas changed): every `node/` scope
/// (each lists its caches), every `cache/` scope, and `extra` (a removed
/// cache's own scope).
pub async fn mark_placement_change(
    conn: &mut PgConnection,
    cluster_id: &str,
    extra: &[Scope],
) -> Result<()> {
    db::snapshots::mark_all_node_scopes_dirty(conn, cluster_id).await?;
    let mut scopes = cache_scopes(conn, cluster_id).await?;
    scopes.extend_from_slice(extra);
    scopes.sort();
    scopes.dedup();
    mark(conn, cluster_id, &scopes).await
}

/// `PublishSnapshot`: publishes the named scopes, or (none named) every
/// dirty scope and every scope whose compiled content differs from the
/// group's (platform principals).
pub async fn publish(
    ctx: &Context,
    principal: &Principal,
    request: &pb::PublishSnapshotRequest,
) -> Result<pb::PublishSnapshotResponse> {
    let action = Action::new(
        principal.actor(),
        ACTION_PUBLISH,
        Some(&request.cluster_id),
        request.scopes.join(","),
    );
    let checked = principal.require_platform().and_then(|()| {
        let cluster = ClusterId::new(request.cluster_id.as_str())?;
        let scopes = request
            .scopes
            .iter()
            .map(|s| s.parse::<Scope>().map_err(Error::from))
            .collect::<Result<Vec<_>>>()?;
        Ok((cluster, scopes))
    });
    let checked = match checked {
        Ok((cluster, scopes)) => {
            let keys = PreloadedKeys::load(&ctx.keys_dir, cluster.as_str()).await;
            Ok((cluster, scopes, keys))
        }
        Err(e) => Err(e),
    };
    let actor = principal.actor();
    fencing::run(
        &ctx.pool,
        &ctx.authority,
        action,
        checked,
        async |tx, fence, (cluster, scopes, keys)| {
            let keys = keys.take(&cluster).await?;
            let publisher = Publisher {
                authority: &ctx.authority,
                keys: &keys,
                cluster: &cluster,
                fence: &fence,
                actor: &actor,
                sign_under: None,
            };
            // None named: everything that differs from the group, the
            // dirty scopes included (and unmarked).
            let asked = if scopes.is_empty() {
                Asked::All
            } else {
                Asked::Scopes(scopes)
            };
            let mut outcome = publisher.publish(tx, asked, Mode::Changed).await?;
            outcome.published.sort_by(|a, b| a.scope.cmp(&b.scope));
            let details = details(&outcome);
            Ok((
                pb::PublishSnapshotResponse {
                    published: outcome.published,
                },
                details,
            ))
        },
    )
    .await
}

/// Audit details of a publication: counts and the first scopes.
fn details(outcome: &Outcome) -> serde_json::Value {
    const LISTED: usize = 20;
    serde_json::json!({
        "published": outcome.published.len(),
        "unchanged": outcome.unchanged,
        "undefined": outcome.undefined,
        "scopes": outcome
            .published
            .iter()
            .take(LISTED)
            .map(|p| format!("{}@{}", p.scope, p.version))
            .collect::<Vec<_>>(),
    })
}

/// `GetSnapshot`: the group's newest envelope of a scope (platform
/// principals). Read from the group, so it is what readers get.
pub async fn get(
    ctx: &Context,
    principal: &Principal,
    request: &pb::GetSnapshotRequest,
) -> Result<pb::GetSnapshotResponse> {
    let action = Action::new(
        principal.actor(),
        ACTION_GET,
        Some(&request.cluster_id),
        request.scope.clone(),
    );
    let checked = principal.require_platform().and_then(|()| {
        ClusterId::new(request.cluster_id.as_str())?;
        request.scope.parse::<Scope>()?;
        Ok(())
    });
    crate::audit::refuse_unless(&ctx.pool, &action, checked).await?;
    let mut conn = ctx.pool.acquire().await?;
    crate::clusters::require_exists(&mut conn, &request.cluster_id).await?;
    let peers = fencing::storage_peers(&mut conn, &request.cluster_id).await?;
    drop(conn);
    let heads = ctx
        .authority
        .shard_heads(
            &request.cluster_id,
            &peers,
            vec![request.scope.clone()],
            true,
        )
        .await?;
    match heads.heads.into_iter().find(|h| h.scope == request.scope) {
        Some(head) => Ok(pb::GetSnapshotResponse {
            envelope: head.envelope,
        }),
        None => Err(Error::not_found(
            "published scope",
            format!("{}/{}", request.cluster_id, request.scope),
        )),
    }
}

/// `ListSnapshots`: the newest recorded publication of each scope, by
/// scope, one page at a time (platform principals).
pub async fn list(
    ctx: &Context,
    principal: &Principal,
    request: &pb::ListSnapshotsRequest,
) -> Result<(Vec<pb::SnapshotRecord>, String)> {
    let action = Action::new(
        principal.actor(),
        ACTION_LIST,
        Some(&request.cluster_id),
        "",
    );
    let checked = principal.require_platform().and_then(|()| {
        ClusterId::new(request.cluster_id.as_str())?;
        Ok(())
    });
    crate::audit::refuse_unless(&ctx.pool, &action, checked).await?;
    let page = Page::from_pb(request.page.as_ref());
    let mut conn = ctx.pool.acquire().await?;
    crate::clusters::require_exists(&mut conn, &request.cluster_id).await?;
    let rows =
        db::snapshots::list_latest(&mut conn, &request.cluster_id, &page.after, page.limit())
            .await?;
    let mut records: Vec<pb::SnapshotRecord> = rows
        .into_iter()
        .map(|r| pb::SnapshotRecord {
            scope: r.scope,
            version: u64::try_from(r.version).unwrap_or(0),
            authority_term: u64::try_from(r.authority_term).unwrap_or(0),
            content_hash: r.content_hash,
            published_by: r.published_by,
            published_at_unix_ms: r.published_at_unix_ms,
        })
        .collect();
    let next = page.finish(&mut records, |r| r.scope.clone());
    Ok((records, next))
}

/// Publishes `cluster_id`'s dirty scopes as the publisher task; with
/// `refresh`, first reads every head of the group (no fence) and re-signs
/// those that expire within
/// [`SHARD_REFRESH_BEFORE_EXPIRY`](crate::limits::SHARD_REFRESH_BEFORE_EXPIRY).
/// Nothing to do takes no fence and writes nothing.
pub async fn publish_cluster(ctx: &Context, cluster_id: &str, refresh: bool) -> Result<Outcome> {
    let cluster = ClusterId::new(cluster_id)?;
    let asked = if refresh {
        let expiring = expiring_scopes(ctx, cluster_id).await?;
        if expiring.is_empty() {
            return Ok(Outcome::default());
        }
        Asked::Scopes(expiring)
    } else {
        let mut conn = ctx.pool.acquire().await?;
        if db::snapshots::dirty(&mut conn, cluster_id, 1)
            .await?
            .is_empty()
        {
            return Ok(Outcome::default());
        }
        Asked::Dirty
    };
    let action = Action::new(PUBLISHER_ACTOR, ACTION_PUBLISH, Some(cluster_id), "");
    let keys = PreloadedKeys::load(&ctx.keys_dir, cluster_id).await;
    fencing::run(
        &ctx.pool,
        &ctx.authority,
        action,
        Ok(keys),
        async |tx, fence, keys| {
            let keys = keys.take(&cluster).await?;
            let publisher = Publisher {
                authority: &ctx.authority,
                keys: &keys,
                cluster: &cluster,
                fence: &fence,
                actor: PUBLISHER_ACTOR,
                sign_under: None,
            };
            let mut outcome = publisher
                .publish(
                    tx,
                    asked,
                    if refresh {
                        Mode::Refresh
                    } else {
                        Mode::Changed
                    },
                )
                .await?;
            outcome.published.sort_by(|a, b| a.scope.cmp(&b.scope));
            let details = details(&outcome);
            Ok((outcome, details))
        },
    )
    .await
}

/// The scopes whose newest shard in the group expires soon.
async fn expiring_scopes(ctx: &Context, cluster_id: &str) -> Result<Vec<Scope>> {
    let peers = {
        let mut conn = ctx.pool.acquire().await?;
        fencing::storage_peers(&mut conn, cluster_id).await?
    };
    let heads = ctx
        .authority
        .shard_heads(cluster_id, &peers, Vec::new(), false)
        .await?;
    let soon = rap_proto::time::UnixMillis::now()
        .plus_ms(
            i64::try_from(crate::limits::SHARD_REFRESH_BEFORE_EXPIRY.as_millis())
                .unwrap_or(i64::MAX),
        )
        .0;
    Ok(heads
        .heads
        .into_iter()
        .filter(|h| h.expires_at_unix_ms <= soon)
        .filter_map(|h| h.scope.parse().ok())
        .collect())
}

/// The publisher task: publishes dirty scopes when a mutation commits
/// (notification on [`DIRTY_CHANNEL`]) or at the latest every
/// [`PUBLISH_POLL_INTERVAL`], and re-signs expiring shards every
/// [`SHARD_REFRESH_INTERVAL`]. Failures (no quorum, a cluster not
/// bootstrapped) are logged and retried; the dirty marks stay.
pub async fn run_publisher(ctx: Context, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut listener = match sqlx::postgres::PgListener::connect_with(&ctx.pool).await {
        Ok(mut listener) => match listener.listen(DIRTY_CHANNEL).await {
            Ok(()) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "snapshot publisher cannot listen; polling only");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "snapshot publisher cannot listen; polling only");
            None
        }
    };
    let mut refresh = tokio::time::interval_at(
        tokio::time::Instant::now() + SHARD_REFRESH_INTERVAL,
        SHARD_REFRESH_INTERVAL,
    );
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut full = false;
        tokio::select! {
            _ = stop.changed() => return,
            _ = refresh.tick() => full = true,
            _ = wait_for_notification(&mut listener) => {}
            _ = tokio::time::sleep(PUBLISH_POLL_INTERVAL) => {}
        }
        let clusters = if full {
            db_clusters(&ctx).await
        } else {
            match ctx.pool.acquire().await {
                Ok(mut conn) => db::snapshots::clusters_with_dirty(&mut conn)
                    .await
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            }
        };
        for cluster_id in clusters {
            let span = tracing::info_span!("publisher", cluster_id = %cluster_id, refresh = full);
            if let Err(e) = publish_cluster(&ctx, &cluster_id, full)
                .instrument(span)
                .await
            {
                tracing::warn!(cluster_id = %cluster_id, code = e.code(), error = %e, "snapshot publication failed; will retry");
            }
        }
    }
}

async fn wait_for_notification(listener: &mut Option<sqlx::postgres::PgListener>) {
    match listener {
        Some(l) => {
            if l.recv().await.is_err() {
                // The listener reconnects on the next recv; pace it.
                tokio::time::sleep(PUBLISH_POLL_INTERVAL).await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Every bootstrapped cluster (for the freshness pass).
async fn db_clusters(ctx: &Context) -> Vec<String> {
    match ctx.pool.acquire().await {
        Ok(mut conn) => db::authority_terms::bootstrapped_clusters(&mut conn)
            .await
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}
