//! Clusters: records, key material, and the authority group's bootstrap.

use crate::audit::{self, Action};
use crate::auth::Principal;
use crate::context::Context;
use crate::db;
use crate::error::{Error, Result};
use crate::keys::ClusterKeys;
use crate::page::Page;
use rap_authority::client::orders;
use rap_authority::convert::member_of;
use rap_proto::ids::ClusterId;
use rap_proto::pb;

/// Most voters a bootstrap may name.
pub const BOOTSTRAP_VOTERS_MAX: usize = 7;

/// The current authority row of a cluster: `(term, last_seq)`.
pub async fn current_term(
    conn: &mut sqlx::PgConnection,
    cluster_id: &str,
) -> Result<Option<(u64, u64)>> {
    let row = db::authority_terms::current(conn, cluster_id).await?;
    Ok(row.map(|row| {
        (
            u64::try_from(row.authority_term).unwrap_or(0),
            row.last_seq(),
        )
    }))
}

/// Loads a cluster's key files on a blocking thread: loading reads files
/// and may re-issue a certificate (with fsync), which must not stall an
/// async thread, least of all inside a fenced transaction.
pub async fn load_keys(keys_dir: &std::path::Path, cluster: &ClusterId) -> Result<ClusterKeys> {
    let (keys_dir, cluster) = (keys_dir.to_path_buf(), cluster.clone());
    tokio::task::spawn_blocking(move || ClusterKeys::load(&keys_dir, &cluster))
        .await
        .map_err(|e| Error::Internal(format!("loading cluster keys: {e}")))?
}

/// A cluster's keys read before a fenced transaction begins, so that the
/// file reads, x509 parsing and any renewal (with fsync) never run while
/// the authority row is locked, nor on an async thread ([`load_keys`]).
/// A failure is kept and reported where the keys are used, so a refusal
/// keeps the order of its checks.
#[derive(Debug)]
pub struct PreloadedKeys {
    keys_dir: std::path::PathBuf,
    loaded: Option<(String, Result<ClusterKeys>)>,
}

impl PreloadedKeys {
    /// Reads `cluster_id`'s keys now (nothing when it is no valid id).
    pub async fn load(keys_dir: &std::path::Path, cluster_id: &str) -> Self {
        let loaded = match ClusterId::new(cluster_id) {
            Ok(cluster) => Some((cluster_id.to_string(), load_keys(keys_dir, &cluster).await)),
            Err(_) => None,
        };
        PreloadedKeys {
            keys_dir: keys_dir.to_path_buf(),
            loaded,
        }
    }

    /// Reads nothing ahead: [`PreloadedKeys::take`] reads (for a path that
    /// holds no authority row lock).
    pub fn later(keys_dir: &std::path::Path) -> Self {
        PreloadedKeys {
            keys_dir: keys_dir.to_path_buf(),
            loaded: None,
        }
    }

    /// The keys of `cluster`: the ones read ahead, or (for another
    /// cluster, or none read) read now.
    pub async fn take(self, cluster: &ClusterId) -> Result<ClusterKeys> {
        match self.loaded {
            Some((id, keys)) if id == cluster.as_str() => keys,
            _ => load_keys(&self.keys_dir, cluster).await,
        }
    }
}

/// Fails with `NOT_FOUND` unless the cluster exists.
pub async fn require_exists(conn: &mut sqlx::PgConnection, cluster_id: &str) -> Result<()> {
    if db::clusters::exists(conn, cluster_id).await? {
        Ok(())
    } else {
        Err(Error::not_found("cluster", cluster_id))
    }
}

/// Creates a cluster: its CA and snapshot-signing key (files under the
/// keys directory) and its row. Platform principals only.
#[tracing::instrument(skip_all, fields(cluster_id = crate::audit::field(cluster_id)))]
pub async fn create(
    ctx: &Context,
    principal: &Principal,
    cluster_id: &str,
    name: &str,
) -> Result<pb::Cluster> {
    let action = Action::new(
        principal.actor(),
        "cluster.create",
        Some(cluster_id),
        cluster_id,
    );
    let result = async {
        principal.require_platform()?;
        let cluster = ClusterId::new(cluster_id)?;
        let name = if name.is_empty() { cluster_id } else { name };
        if name.len() > crate::limits::TEXT_BYTES_MAX {
            return Err(Error::Oversize {
                what: "cluster name",
                limit: crate::limits::TEXT_BYTES_MAX,
                got: name.len(),
            });
        }
        let mut tx = ctx.pool.begin().await?;
        if db::clusters::exists(&mut tx, cluster_id).await? {
            return Err(Error::AlreadyExists {
                kind: "cluster",
                id: cluster_id.to_string(),
            });
        }
        // Keys left by a create whose row was never written are reused.
        // Key generation and its fsyncs run on a blocking thread.
        let (keys_dir, for_cluster) = (ctx.keys_dir.clone(), cluster.clone());
        let keys =
            tokio::task::spawn_blocking(move || match ClusterKeys::load(&keys_dir, &for_cluster) {
                Ok(keys) => Ok(keys),
                Err(_) => ClusterKeys::create(&keys_dir, &for_cluster),
            })
            .await
            .map_err(|e| Error::Internal(format!("creating cluster keys: {e}")))??;
        let signing_key_id = keys.signing_key_id_hex();
        let ca_fingerprint = keys.ca_fingerprint();
        let trust_root = keys.trust_root_bytes();
        db::clusters::insert(
            &mut tx,
            db::clusters::NewCluster {
                cluster_id,
                name,
                ca_fingerprint: &ca_fingerprint,
                ca_cert_pem: keys.ca_cert_pem(),
                signing_key_id: &signing_key_id,
                trust_root,
            },
        )
        .await?;
        audit::record_ok(
            &mut tx,
            &action,
            None,
            serde_json::json!({"ca_fingerprint": keys.ca_fingerprint()}),
        )
        .await?;
        tx.commit().await?;
        if let Some(tls) = &ctx.tls {
            tls.add_cluster(&keys)?;
        }
        tracing::info!(cluster_id, "cluster created");
        get_unchecked(ctx, cluster_id).await
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// Lists clusters (platform principals).
pub async fn list(
    ctx: &Context,
    principal: &Principal,
    page: Option<&pb::PageRequest>,
) -> Result<(Vec<pb::Cluster>, String)> {
    principal.require_platform()?;
    let page = Page::from_pb(page);
    let ids = {
        let mut conn = ctx.pool.acquire().await?;
        db::clusters::list_ids(&mut conn, &page.after, page.limit()).await?
    };
    let mut clusters = Vec::with_capacity(ids.len());
    for id in &ids {
        clusters.push(get_unchecked(ctx, id).await?);
    }
    let next = page.finish(&mut clusters, |c| c.cluster_id.clone());
    Ok((clusters, next))
}

/// One cluster (platform principals).
pub async fn get(ctx: &Context, principal: &Principal, cluster_id: &str) -> Result<pb::Cluster> {
    principal.require_platform()?;
    get_unchecked(ctx, cluster_id).await
}

async fn get_unchecked(ctx: &Context, cluster_id: &str) -> Result<pb::Cluster> {
    let mut conn = ctx.pool.acquire().await?;
    let Some(row) = db::clusters::overview(&mut conn, cluster_id).await? else {
        return Err(Error::not_found("cluster", cluster_id));
    };
    Ok(pb::Cluster {
        cluster_id: row.cluster_id,
        name: row.name,
        authority_term: row
            .authority_term
            .and_then(|t| u64::try_from(t).ok())
            .unwrap_or(0),
        ca_fingerprint: row.ca_fingerprint,
        signing_key_id: row.signing_key_id,
        created_at_unix_ms: row.created_at_unix_ms,
        last_fence_seq: row
            .last_seq
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0),
        storage_nodes: storage_endpoints(&mut conn, cluster_id).await?,
        active_nodes: u32::try_from(row.active_nodes).unwrap_or(u32::MAX),
    })
}

/// The recorded storage nodes of a cluster, voters first.
pub async fn storage_endpoints(
    conn: &mut sqlx::PgConnection,
    cluster_id: &str,
) -> Result<Vec<pb::StorageEndpoint>> {
    Ok(db::storage_nodes::not_retired(conn, cluster_id)
        .await?
        .into_iter()
        .map(|row| pb::StorageEndpoint {
            node_id: row.node_id,
            address: row.address,
            domain: Some(pb::FailureDomain {
                region: row.region,
                zone: row.zone,
                host: row.host,
            }),
        })
        .collect())
}

/// Initializes the cluster's authority group on running `rap-configstore`
/// nodes, records them in `storage_nodes` and writes authority term 1.
/// Platform-owner or platform-admin.
#[tracing::instrument(skip_all, fields(cluster_id = crate::audit::field(&request.cluster_id)))]
pub async fn bootstrap(
    ctx: &Context,
    principal: &Principal,
    request: &pb::BootstrapClusterRequest,
) -> Result<pb::BootstrapClusterResponse> {
    let cluster_id = request.cluster_id.as_str();
    let action = Action::new(
        principal.actor(),
        "cluster.bootstrap",
        Some(cluster_id),
        cluster_id,
    );
    let result = async {
        principal.require_platform()?;
        ClusterId::new(cluster_id)?;
        if request.voters.len() > BOOTSTRAP_VOTERS_MAX {
            return Err(Error::Oversize {
                what: "voters",
                limit: BOOTSTRAP_VOTERS_MAX,
                got: request.voters.len(),
            });
        }
        if request.voters.is_empty() {
            return Err(Error::invalid("name the voters: --voter <node-id>=<host:port>"));
        }
        let members = request
            .voters
            .iter()
            .map(member_of)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid(e.to_string()))?;
        let mut conn = ctx.pool.acquire().await?;
        require_exists(&mut conn, cluster_id).await?;
        if let Some((term, _)) = current_term(&mut conn, cluster_id).await? {
            return Err(Error::FailedPrecondition(format!(
                "cluster {cluster_id} is already bootstrapped (authority term {term})"
            )));
        }
        let trust_root = db::clusters::trust_root(&mut conn, cluster_id).await?;
        drop(conn);
        let network = ctx.authority.load_network(cluster_id).await?;
        let bootstrap = pb::BootstrapGroupRequest {
            cluster_id: cluster_id.to_string(),
            voters: request.voters.clone(),
            trust_root,
            allow_single_voter: request.allow_single_voter,
        };
        let answer = orders::bootstrap_group(&network, &bootstrap)
            .await
            .map_err(|e| match e {
                // A typed refusal (too few voters, already initialized,
                // wrong cluster) is final.
                rap_authority::Error::Refused { code, message } => {
                    Error::Authority { code, message }
                }
                e @ (rap_authority::Error::InvalidRequest(_)
                | rap_authority::Error::Oversize { .. }) => Error::Authority {
                    code: e.code().to_string(),
                    message: e.to_string(),
                },
                e => Error::AuthorityUnreachable(e.to_string()),
            })?;
        let mut tx = ctx.pool.begin().await?;
        for member in &members {
            let node = db::storage_nodes::StorageNode {
                node_id: member.node_id.clone(),
                address: member.address.clone(),
                region: member.region.clone(),
                zone: member.zone.clone(),
                host: member.host.clone(),
                role: "voter".to_string(),
            };
            db::storage_nodes::upsert_voter(&mut tx, cluster_id, &node).await?;
        }
        let voters: Vec<String> = members.iter().map(|m| m.node_id.clone()).collect();
        db::authority_terms::insert_first(&mut tx, cluster_id, answer.authority_term, &voters)
            .await?;
        // The all-nodes scopes exist from the start: every node's
        // readable scopes name them.
        crate::snapshots::mark(
            &mut tx,
            cluster_id,
            &[
                rap_proto::envelope::Scope::TrustRevocations,
                rap_proto::envelope::Scope::TrustRoot,
            ],
        )
        .await?;
        audit::record_ok(
            &mut tx,
            &action,
            None,
            serde_json::json!({
                "authority_term": answer.authority_term,
                "voters": members.iter().map(|m| m.node_id.clone()).collect::<Vec<_>>(),
                "failure_tolerance": answer.failure_tolerance,
            }),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(cluster_id, term = answer.authority_term, tolerance = %answer.failure_tolerance, "authority group bootstrapped");
        Ok(pb::BootstrapClusterResponse {
            authority_term: answer.authority_term,
            failure_tolerance: answer.failure_tolerance,
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}
