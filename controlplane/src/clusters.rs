//! Clusters: records, key material, and the authority group's bootstrap.

use crate::audit::{self, Action};
use crate::auth::Principal;
use crate::context::Context;
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
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT authority_term, last_seq FROM cluster_authority_terms
          WHERE cluster_id = $1 AND ended_at IS NULL",
    )
    .bind(cluster_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(t, s)| (u64::try_from(t).unwrap_or(0), u64::try_from(s).unwrap_or(0))))
}

/// Fails with `NOT_FOUND` unless the cluster exists.
pub async fn require_exists(conn: &mut sqlx::PgConnection, cluster_id: &str) -> Result<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM clusters WHERE cluster_id = $1)")
            .bind(cluster_id)
            .fetch_one(conn)
            .await?;
    if exists {
        Ok(())
    } else {
        Err(Error::not_found("cluster", cluster_id))
    }
}

/// Creates a cluster: its CA and snapshot-signing key (files under the
/// keys directory) and its row. Platform principals only.
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
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM clusters WHERE cluster_id = $1)")
                .bind(cluster_id)
                .fetch_one(&mut *tx)
                .await?;
        if exists {
            return Err(Error::AlreadyExists {
                kind: "cluster",
                id: cluster_id.to_string(),
            });
        }
        // Keys left by a create whose row was never written are reused.
        let keys = match ClusterKeys::load(&ctx.keys_dir, &cluster) {
            Ok(keys) => keys,
            Err(_) => ClusterKeys::create(&ctx.keys_dir, &cluster)?,
        };
        sqlx::query(
            "INSERT INTO clusters (cluster_id, name, ca_fingerprint, ca_cert_pem, signing_key_id, trust_root)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(cluster_id)
        .bind(name)
        .bind(keys.ca_fingerprint())
        .bind(keys.ca_cert_pem())
        .bind(keys.signing_key_id_hex())
        .bind(keys.trust_root_bytes())
        .execute(&mut *tx)
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
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT cluster_id FROM clusters WHERE cluster_id > $1 ORDER BY cluster_id LIMIT $2",
    )
    .bind(&page.after)
    .bind(page.limit())
    .fetch_all(&ctx.pool)
    .await?;
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
    type Row = (
        String,
        String,
        String,
        String,
        i64,
        Option<i64>,
        Option<i64>,
        i64,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT c.cluster_id, c.name, c.ca_fingerprint, c.signing_key_id,
                (extract(epoch FROM c.created_at) * 1000)::bigint,
                t.authority_term, t.last_seq,
                (SELECT count(*) FROM cluster_memberships m
                  WHERE m.cluster_id = c.cluster_id AND m.membership_status = 'active')
           FROM clusters c
           LEFT JOIN cluster_authority_terms t
                  ON t.cluster_id = c.cluster_id AND t.ended_at IS NULL
          WHERE c.cluster_id = $1",
    )
    .bind(cluster_id)
    .fetch_optional(&ctx.pool)
    .await?;
    let Some((id, name, ca, key, created, term, seq, active)) = row else {
        return Err(Error::not_found("cluster", cluster_id));
    };
    Ok(pb::Cluster {
        cluster_id: id,
        name,
        authority_term: term.and_then(|t| u64::try_from(t).ok()).unwrap_or(0),
        ca_fingerprint: ca,
        signing_key_id: key,
        created_at_unix_ms: created,
        last_fence_seq: seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
        storage_nodes: storage_endpoints(&ctx.pool, cluster_id).await?,
        active_nodes: u32::try_from(active).unwrap_or(u32::MAX),
    })
}

/// The recorded storage nodes of a cluster, voters first.
pub async fn storage_endpoints(
    pool: &sqlx::PgPool,
    cluster_id: &str,
) -> Result<Vec<pb::StorageEndpoint>> {
    let rows: Vec<(String, String, String, String, String)> = sqlx::query_as(
        "SELECT node_id, address, region, zone, host FROM storage_nodes
          WHERE cluster_id = $1 AND role <> 'retired' ORDER BY role DESC, node_id",
    )
    .bind(cluster_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(node_id, address, region, zone, host)| pb::StorageEndpoint {
                node_id,
                address,
                domain: Some(pb::FailureDomain { region, zone, host }),
            },
        )
        .collect())
}

/// Initializes the cluster's authority group on running `rap-configstore`
/// nodes, records them in `storage_nodes` and writes authority term 1.
/// Platform-owner or platform-admin.
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
        let trust_root: Vec<u8> =
            sqlx::query_scalar("SELECT trust_root FROM clusters WHERE cluster_id = $1")
                .bind(cluster_id)
                .fetch_one(&mut *conn)
                .await?;
        drop(conn);
        let network = ctx.authority.network(cluster_id)?;
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
        let term = i64::try_from(answer.authority_term)
            .map_err(|_| Error::Internal("authority term overflow".into()))?;
        let mut tx = ctx.pool.begin().await?;
        for member in &members {
            sqlx::query(
                "INSERT INTO storage_nodes (cluster_id, node_id, address, region, zone, host, role)
                 VALUES ($1, $2, $3, $4, $5, $6, 'voter')
                 ON CONFLICT (cluster_id, node_id) DO UPDATE
                   SET address = EXCLUDED.address, region = EXCLUDED.region, zone = EXCLUDED.zone,
                       host = EXCLUDED.host, role = 'voter', updated_at = now()",
            )
            .bind(cluster_id)
            .bind(&member.node_id)
            .bind(&member.address)
            .bind(&member.region)
            .bind(&member.zone)
            .bind(&member.host)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO cluster_authority_terms (cluster_id, authority_term, reason, survivors)
             VALUES ($1, $2, 'bootstrap', $3)",
        )
        .bind(cluster_id)
        .bind(term)
        .bind(members.iter().map(|m| m.node_id.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
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
