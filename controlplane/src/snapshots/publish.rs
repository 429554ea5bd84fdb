//! Publishing compiled shards inside a fenced transaction.
//!
//! **Versions come from the group, or from the record when it is newer.**
//! The next version of a scope chains onto the group's own newest envelope
//! of it (`ShardHeads`, read linearizably on the leader after the fence was
//! granted). A publish that the group accepted but whose transaction then
//! failed to commit therefore leaves no trap: the next publish of that
//! scope reads the orphaned head, takes the version after it and chains to
//! it, and — because the dirty marks rolled back with the failed
//! transaction and the content is compiled from PostgreSQL again —
//! replaces the orphan's content with the committed state. After a
//! promotion the new group starts from the survivors' state, which may
//! lack what the old side published (and PostgreSQL recorded) between the
//! split and the order; agents and caches that took those versions would
//! refuse the group's lower numbers as rollbacks, and the record's primary
//! key would refuse them too. So when PostgreSQL recorded a newer version
//! of a scope than the group holds, the next version chains onto the
//! recorded one (its version and header hash) instead, and readers move
//! forward from either. Versions strictly increase per scope across
//! restarts, promotions and several control planes, because every
//! publisher holds the cluster's authority row lock (the fenced
//! transaction) while it reads heads and the record and publishes.
//!
//! **Unchanged is not published.** A compiled body whose blake3 equals the
//! head's content hash is skipped, unless the head expires within
//! [`SHARD_REFRESH_BEFORE_EXPIRY`] and a freshness pass asked for it.

use super::compile::{ClusterRows, Compiled, Compiler};
use crate::db;
use crate::error::{Error, Result};
use crate::fencing::{self, AuthorityClients};
use crate::keys::ClusterKeys;
use crate::limits::{PUBLISH_SCOPES_MAX, SHARD_REFRESH_BEFORE_EXPIRY, SHARD_VALIDITY};
use rap_authority::limits::{PUBLISH_BYTES_MAX, PUBLISH_ENVELOPES_MAX};
use rap_core::Fence;
use rap_proto::envelope::{Digest, Scope, ShardDraft, seal};
use rap_proto::ids::{ClusterId, SnapshotVersion, TrustGeneration};
use rap_proto::pb;
use rap_proto::time::UnixMillis;
use sqlx::PgConnection;
use std::collections::{BTreeMap, BTreeSet};

/// Which scopes a publication compiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Asked {
    /// Exactly these (a scope the state does not define is skipped).
    Scopes(Vec<Scope>),
    /// The cluster's dirty scopes (unmarked once published).
    Dirty,
    /// Every scope the cluster's state defines, and the dirty scopes
    /// (unmarked once published).
    All,
}

/// What a publication did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The scopes published, with their new versions.
    pub published: Vec<pb::ScopePublication>,
    /// Scopes compiled but unchanged (and fresh enough).
    pub unchanged: usize,
    /// Scopes asked for that the cluster's state does not define.
    pub undefined: usize,
}

/// Which compiled scopes a publication signs and publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Those whose content differs from the group's head.
    Changed,
    /// Those, and those whose head expires within
    /// [`SHARD_REFRESH_BEFORE_EXPIRY`] (the freshness pass).
    Refresh,
    /// All of them (a signing-key rotation re-signs everything).
    Resign,
}

/// Who publishes, under which fence, with which key: everything a
/// publication needs besides the transaction and what to publish.
#[derive(Clone, Copy, Debug)]
pub struct Publisher<'a> {
    /// Clients of the cluster's authority group.
    pub authority: &'a AuthorityClients,
    /// The cluster's keys (the snapshot-signing key signs).
    pub keys: &'a ClusterKeys,
    /// The cluster.
    pub cluster: &'a ClusterId,
    /// The fence the publication is made under.
    pub fence: &'a Fence,
    /// The actor recorded with each publication.
    pub actor: &'a str,
    /// Sign under this trust generation instead of the group's current
    /// one (a rotation: the batch's `trust/root` envelope, sent first,
    /// moves the group there).
    pub sign_under: Option<TrustGeneration>,
}

impl Publisher<'_> {
    /// Compiles the `asked` scopes from the transaction's view of
    /// PostgreSQL, publishes those that `mode` picks to the group under the
    /// fence, records them in `snapshot_publications`, and unmarks what it
    /// compiled.
    pub async fn publish(
        &self,
        tx: &mut PgConnection,
        asked: Asked,
        mode: Mode,
    ) -> Result<Outcome> {
        publish_in(tx, self, asked, mode).await
    }
}

/// Records in `cluster_trust_roots` every root after the newest recorded
/// one up to `generation`, from the keys on disk: a rotation records its
/// new root this way, and the publisher repairs a root the group already
/// moved to but PostgreSQL lost (a rotation whose commit failed), so that
/// `trust/root` keeps carrying the whole chain. Returns how many it wrote.
pub(super) async fn record_roots_up_to(
    tx: &mut PgConnection,
    keys: &ClusterKeys,
    cluster_id: &str,
    generation: TrustGeneration,
    actor: &str,
) -> Result<u64> {
    let recorded = db::clusters::rotated_roots(tx, cluster_id)
        .await?
        .last()
        .map(|r| u64::try_from(r.generation).unwrap_or(0))
        .unwrap_or(1);
    for missing in recorded + 1..=generation.0 {
        let missing = TrustGeneration(missing);
        let root = keys.root_bytes(missing).ok_or_else(|| {
            Error::Keys(format!(
                "cluster {cluster_id} needs trust generation {generation}; this control plane holds no root of generation {missing}"
            ))
        })?;
        let key_id = keys.shard_signer(missing)?.key_id().0.to_hex();
        let at = i64::try_from(missing.0).unwrap_or(i64::MAX);
        db::clusters::insert_rotated_root(tx, cluster_id, at, root, &key_id, actor).await?;
    }
    Ok(generation.0.saturating_sub(recorded))
}

/// The group's trust generation, with any root it holds that PostgreSQL
/// lacks recorded ([`record_roots_up_to`]).
async fn group_generation(
    tx: &mut PgConnection,
    publisher: &Publisher<'_>,
    peers: &[crate::fencing::StoragePeer],
) -> Result<TrustGeneration> {
    let cluster_id = publisher.cluster.as_str();
    let generation = TrustGeneration(
        publisher
            .authority
            .shard_heads(cluster_id, peers, vec![Scope::TrustRoot.to_string()], false)
            .await?
            .trust_generation
            .max(1),
    );
    let repaired =
        record_roots_up_to(tx, publisher.keys, cluster_id, generation, publisher.actor).await?;
    if repaired > 0 {
        tracing::warn!(
            cluster_id,
            generation = generation.0,
            repaired,
            "recorded trust roots the group already held"
        );
    }
    Ok(generation)
}

async fn publish_in(
    tx: &mut PgConnection,
    publisher: &Publisher<'_>,
    asked: Asked,
    mode: Mode,
) -> Result<Outcome> {
    let Publisher {
        authority,
        keys,
        cluster,
        fence,
        actor,
        sign_under,
    } = *publisher;
    let cluster_id = cluster.as_str();
    let peers = fencing::storage_peers(tx, cluster_id).await?;
    let generation = match sign_under {
        Some(generation) => generation,
        None => group_generation(tx, publisher, &peers).await?,
    };
    let signer = keys.shard_signer(generation)?;
    let compiler = Compiler::new(ClusterRows::load(tx, cluster).await?);
    let limit = i64::try_from(PUBLISH_SCOPES_MAX).unwrap_or(i64::MAX);
    let (scopes, dirty): (Vec<Scope>, Vec<db::snapshots::Mark>) = match asked {
        Asked::Scopes(scopes) => (scopes, Vec::new()),
        Asked::All => {
            let dirty = db::snapshots::dirty(tx, cluster_id, limit).await?;
            let mut scopes = compiler.scopes()?;
            scopes.extend(dirty_scopes(cluster_id, &dirty));
            (scopes.into_iter().collect(), dirty)
        }
        Asked::Dirty => {
            let dirty = db::snapshots::dirty(tx, cluster_id, limit).await?;
            let scopes = dirty_scopes(cluster_id, &dirty).collect();
            (scopes, dirty)
        }
    };
    if scopes.len() > PUBLISH_SCOPES_MAX {
        return Err(Error::Oversize {
            what: "scopes of one publication",
            limit: PUBLISH_SCOPES_MAX,
            got: scopes.len(),
        });
    }
    let scopes: BTreeSet<Scope> = scopes.into_iter().collect();
    let mut outcome = Outcome::default();
    let mut compiled: Vec<Compiled> = Vec::with_capacity(scopes.len());
    for scope in &scopes {
        match compiler.compile(scope)? {
            Some(shard) => compiled.push(shard),
            None => outcome.undefined += 1,
        }
    }

    let heads: BTreeMap<String, pb::ShardHead> = if compiled.is_empty() {
        BTreeMap::new()
    } else {
        authority
            .shard_heads(
                cluster_id,
                &peers,
                compiled.iter().map(|c| c.scope.to_string()).collect(),
                false,
            )
            .await?
            .heads
            .into_iter()
            .map(|head| (head.scope.clone(), head))
            .collect()
    };

    let names: Vec<String> = compiled.iter().map(|c| c.scope.to_string()).collect();
    let recorded = db::snapshots::latest_of(tx, cluster_id, &names).await?;

    let now = UnixMillis::now();
    let refresh_before = now.plus_ms(millis(SHARD_REFRESH_BEFORE_EXPIRY));
    let mut sealed = Vec::new();
    for shard in compiled {
        let scope = shard.scope.to_string();
        let head = heads.get(&scope);
        let base = chain_base(&scope, head, recorded.get(&scope))?;
        if let Some(head) = head {
            let same = head.content_hash == blake3::hash(&shard.body).as_bytes().as_slice()
                && head.trust_generation == generation.0
                && base.is_some_and(|(version, _)| version == head.version);
            let keep = match mode {
                Mode::Changed => same,
                Mode::Refresh => same && head.expires_at_unix_ms > refresh_before.0,
                Mode::Resign => false,
            };
            if keep {
                outcome.unchanged += 1;
                continue;
            }
        }
        let (version, prev_hash) = match base {
            Some((version, header_hash)) => (
                version.checked_add(1).ok_or_else(|| {
                    Error::Internal(format!("scope {scope} is at the last version"))
                })?,
                Some(header_hash),
            ),
            None => (1, None),
        };
        let envelope = seal(
            ShardDraft {
                cluster_id: cluster.clone(),
                scope: shard.scope,
                version: SnapshotVersion(version),
                authority_term: fence.authority_term,
                issued_at: now,
                expires_at: now.plus_ms(millis(SHARD_VALIDITY)),
                prev_hash,
                readers: shard.readers,
                body: shard.body,
            },
            signer,
            generation,
        )?;
        sealed.push((scope, envelope));
    }
    // A trust/root envelope goes first: it may move the group to the
    // generation the rest is signed under.
    sealed.sort_by_key(|(scope, _)| scope != "trust/root");

    // Batches within the group's limits; each is all-or-nothing.
    let mut start = 0;
    while start < sealed.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < sealed.len()
            && end - start < PUBLISH_ENVELOPES_MAX
            && (end == start || bytes + sealed[end].1.bytes.len() <= PUBLISH_BYTES_MAX)
        {
            bytes += sealed[end].1.bytes.len();
            end += 1;
        }
        let batch: Vec<Vec<u8>> = sealed[start..end]
            .iter()
            .map(|(_, s)| s.bytes.clone())
            .collect();
        authority
            .publish(cluster_id, &peers, fence.to_pb(), batch)
            .await?;
        start = end;
    }

    let term = i64::try_from(fence.authority_term.0).unwrap_or(i64::MAX);
    let seq = i64::try_from(fence.seq.0).unwrap_or(i64::MAX);
    let rows: Vec<db::snapshots::Published<'_>> = sealed
        .iter()
        .map(|(scope, envelope)| db::snapshots::Published {
            scope,
            version: i64::try_from(envelope.header.version.0).unwrap_or(i64::MAX),
            content_hash: &envelope.header.content_hash.0[..],
            header_hash: &envelope.header_hash.0[..],
            envelope: &envelope.bytes,
        })
        .collect();
    db::snapshots::insert_many(
        tx,
        cluster_id,
        db::snapshots::PublishedUnder {
            authority_term: term,
            fence_seq: seq,
            published_by: actor,
        },
        &rows,
    )
    .await?;
    for (scope, envelope) in &sealed {
        outcome.published.push(pb::ScopePublication {
            scope: scope.clone(),
            version: envelope.header.version.0,
            content_hash: envelope.header.content_hash.0.to_vec(),
            authority_term: fence.authority_term.0,
        });
    }
    if !dirty.is_empty() {
        db::snapshots::unmark(tx, cluster_id, &dirty).await?;
    }
    tracing::info!(
        cluster_id,
        published = outcome.published.len(),
        unchanged = outcome.unchanged,
        undefined = outcome.undefined,
        authority_term = fence.authority_term.0,
        "snapshot shards published"
    );
    Ok(outcome)
}

/// The scopes the dirty marks name (a mark that names none is logged and
/// dropped with the rest once published).
fn dirty_scopes<'a>(
    cluster_id: &'a str,
    marks: &'a [db::snapshots::Mark],
) -> impl Iterator<Item = Scope> + 'a {
    marks.iter().filter_map(move |mark| match mark.scope.parse::<Scope>() {
        Ok(scope) => Some(scope),
        Err(e) => {
            tracing::warn!(cluster_id, scope = %mark.scope, error = %e, "dropping a dirty mark that names no scope");
            None
        }
    })
}

fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// What the next version of `scope` chains onto: the newer of the group's
/// head and PostgreSQL's newest record (see the module docs), as
/// (version, header hash); `None` when neither exists.
fn chain_base(
    scope: &str,
    head: Option<&pb::ShardHead>,
    recorded: Option<&db::snapshots::Latest>,
) -> Result<Option<(u64, Digest)>> {
    let head = match head {
        Some(head) => Some((
            head.version,
            Digest::from_slice("head header hash", &head.header_hash)?,
        )),
        None => None,
    };
    let recorded = match recorded {
        Some(latest) => Some((
            u64::try_from(latest.version).map_err(|_| {
                Error::Internal(format!("scope {scope} has a negative recorded version"))
            })?,
            Digest::from_slice("recorded header hash", &latest.header_hash)?,
        )),
        None => None,
    };
    Ok(match (head, recorded) {
        (Some(head), Some(recorded)) if recorded.0 > head.0 => Some(recorded),
        (Some(head), _) => Some(head),
        (None, recorded) => recorded,
    })
}
