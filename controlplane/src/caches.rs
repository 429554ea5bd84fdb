//! Cache replicas, control-plane side: registering and removing them
//! (`storage_nodes.role = 'cache'`), the cluster's cache policy (how many
//! caches hold each node's scopes) and where node agents live (the labels
//! placement spreads a node's caches by).
//!
//! What a cache holds is decided by the snapshot compiler
//! ([`crate::snapshots::compile`]) and published as the signed
//! `cache/<id>` scope; the voters serve a cache exactly those scopes. Every
//! call here is for platform principals, fenced and audited, and marks the
//! scopes it changes dirty so that the publisher publishes them: adding or
//! removing a cache and the policy touch every `node/` scope (each lists
//! its caches) and every `cache/` scope; a node's location its own `node/`
//! scope and every `cache/` scope. A change that would give one cache more
//! than [`CACHE_SHARD_SCOPES_MAX`](crate::limits::CACHE_SHARD_SCOPES_MAX) scopes is refused (`OVERSIZE`) and
//! changes nothing.

use crate::audit::Action;
use crate::auth::Principal;
use crate::context::Context;
use crate::db;
use crate::error::{Error, Result};
use crate::fencing;
use crate::limits::{
    CACHE_REPLICAS_DEFAULT, CACHE_REPLICAS_MAX, CLUSTER_CACHES_MAX, LOCATION_LABEL_BYTES_MAX,
    STORAGE_ADDRESS_BYTES_MAX,
};
use crate::snapshots::compile::{ClusterRows, Compiler};
use rap_proto::envelope::Scope;
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::pb;
use sqlx::PgConnection;

/// Audit action of registering (or updating) a cache replica.
pub const ACTION_ADD_CACHE: &str = "cluster.add-cache";
/// Audit action of removing a cache replica.
pub const ACTION_REMOVE_CACHE: &str = "cluster.remove-cache";
/// Audit action of setting the cluster's cache replicas per node.
pub const ACTION_CACHE_POLICY: &str = "cluster.cache-policy";
/// Audit action of setting where a node lives.
pub const ACTION_SET_LOCATION: &str = "node.set-location";

// Migration 0005 checks `clusters.cache_replicas BETWEEN 0 AND 5` and
// defaults it to 2.
const _: () = assert!(CACHE_REPLICAS_MAX == 5);
const _: () = assert!(CACHE_REPLICAS_DEFAULT == 2);

/// Checks a location label (region, zone, host): empty (unknown) or up to
/// [`LOCATION_LABEL_BYTES_MAX`] ASCII letters, digits, '.', '_' and '-'.
pub fn check_label(what: &'static str, value: &str) -> Result<()> {
    if value.len() > LOCATION_LABEL_BYTES_MAX {
        return Err(Error::Oversize {
            what,
            limit: LOCATION_LABEL_BYTES_MAX,
            got: value.len(),
        });
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Error::invalid(format!(
            "{what} {:?}: use ASCII letters, digits, '.', '_' and '-'",
            crate::audit::cut(value, 80)
        )));
    }
    Ok(())
}

/// Checks a storage node address: `host:port`, at most
/// [`STORAGE_ADDRESS_BYTES_MAX`] bytes, no spaces or control characters.
fn check_address(address: &str) -> Result<()> {
    if address.len() > STORAGE_ADDRESS_BYTES_MAX {
        return Err(Error::Oversize {
            what: "storage node address",
            limit: STORAGE_ADDRESS_BYTES_MAX,
            got: address.len(),
        });
    }
    let form = || {
        Error::invalid(format!(
            "address {:?}: expected <host>:<port>",
            crate::audit::cut(address, 80)
        ))
    };
    if address
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(form());
    }
    let (host, port) = address.rsplit_once(':').ok_or_else(form)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match port.parse::<u16>() {
        Ok(port) if port != 0 && !host.is_empty() => Ok(()),
        _ => Err(form()),
    }
}

/// An action on `target` in `cluster_id` (the cluster only when it is one).
fn action(principal: &Principal, name: &'static str, cluster_id: &str, target: &str) -> Action {
    let cluster = ClusterId::new(cluster_id).ok();
    Action::new(
        principal.actor(),
        name,
        cluster.as_ref().map(ClusterId::as_str),
        target,
    )
}

/// Compiles every `cache/` scope of the cluster as the transaction sees
/// it: `OVERSIZE` when a cache would hold more than
/// [`CACHE_SHARD_SCOPES_MAX`](crate::limits::CACHE_SHARD_SCOPES_MAX) scopes (the change is then rolled back
/// instead of stopping the publisher).
async fn check_cache_shards(tx: &mut PgConnection, cluster: &ClusterId) -> Result<()> {
    let compiler = Compiler::new(ClusterRows::load(tx, cluster).await?);
    for cache in compiler.cache_ids() {
        compiler.compile(&Scope::Cache(NodeId::new(cache)?))?;
    }
    Ok(())
}

fn endpoint(row: &db::storage_nodes::StorageNode) -> pb::StorageEndpoint {
    pb::StorageEndpoint {
        node_id: row.node_id.clone(),
        address: row.address.clone(),
        domain: Some(pb::FailureDomain {
            region: row.region.clone(),
            zone: row.zone.clone(),
            host: row.host.clone(),
        }),
    }
}

fn not_a_cache(cluster: &str, row: &db::storage_nodes::StorageNode) -> Error {
    Error::StorageRole {
        cluster: cluster.to_string(),
        node: row.node_id.clone(),
        role: row.role.clone(),
        why: "voters and learners hold every shard; a cache replica is a storage node that is \
              neither",
    }
}

/// A validated `AddCacheReplica`.
#[derive(Clone, Debug)]
struct NewCache {
    cluster: ClusterId,
    node: NodeId,
    row: db::storage_nodes::StorageNode,
}

fn validate_add(request: &pb::AddCacheReplicaRequest) -> Result<NewCache> {
    let cluster = ClusterId::new(request.cluster_id.as_str())?;
    let spec = request
        .cache
        .as_ref()
        .ok_or_else(|| Error::invalid("name the cache: --node <id>=<host:port>[,zone=..]"))?;
    let node = NodeId::new(spec.node_id.as_str())?;
    check_address(&spec.address)?;
    let domain = spec.domain.clone().unwrap_or_default();
    check_label("region", &domain.region)?;
    check_label("zone", &domain.zone)?;
    check_label("host", &domain.host)?;
    Ok(NewCache {
        cluster,
        row: db::storage_nodes::StorageNode {
            node_id: node.as_str().to_string(),
            address: spec.address.clone(),
            region: domain.region,
            zone: domain.zone,
            host: domain.host,
            role: "cache".to_string(),
        },
        node,
    })
}

/// `AddCacheReplica` (fenced, `cluster.add-cache`; platform principals):
/// records a cache replica, or updates the address and labels of one (a
/// retired one becomes a cache again). Refused `STORAGE_ROLE` for a voter
/// or learner, `RESERVED_ID` for an id an agent holds, `OVERSIZE` beyond
/// [`CLUSTER_CACHES_MAX`] caches.
#[tracing::instrument(skip_all, fields(cluster_id = crate::audit::field(&request.cluster_id)))]
pub async fn add(
    ctx: &Context,
    principal: &Principal,
    request: &pb::AddCacheReplicaRequest,
) -> Result<pb::CacheReplica> {
    let target = request
        .cache
        .as_ref()
        .map(|c| c.node_id.as_str())
        .unwrap_or_default();
    let action = action(principal, ACTION_ADD_CACHE, &request.cluster_id, target);
    let checked = principal
        .require_platform()
        .and_then(|()| validate_add(request));
    fencing::run(
        &ctx.pool,
        &ctx.authority,
        action,
        checked,
        async |tx, _fence, new: NewCache| {
            let cluster_id = new.cluster.as_str();
            let before = db::storage_nodes::get(tx, cluster_id, new.node.as_str()).await?;
            let previous_role = before.as_ref().map(|row| row.role.clone());
            match &before {
                Some(row) if row.role == "voter" || row.role == "learner" => {
                    return Err(not_a_cache(cluster_id, row));
                }
                Some(row) if row.role == "cache" => {}
                _ => {
                    crate::enrollment::check_reserved(
                        tx,
                        crate::enrollment::KIND_STORAGE,
                        &new.node,
                    )
                    .await?;
                    let caches = db::storage_nodes::cache_ids(tx, cluster_id).await?.len();
                    if caches >= CLUSTER_CACHES_MAX {
                        return Err(Error::Oversize {
                            what: "cache replicas of one cluster",
                            limit: CLUSTER_CACHES_MAX,
                            got: caches + 1,
                        });
                    }
                }
            }
            if !db::storage_nodes::upsert_cache(tx, cluster_id, &new.row).await? {
                return Err(Error::Internal(format!(
                    "storage node {} of {cluster_id} changed role during the transaction",
                    new.node
                )));
            }
            crate::snapshots::mark_placement_change(tx, cluster_id, &[]).await?;
            check_cache_shards(tx, &new.cluster).await?;
            tracing::info!(cluster_id, node_id = %new.node, address = %new.row.address, zone = %new.row.zone, "cache replica registered");
            let details = serde_json::json!({
                "node_id": new.row.node_id,
                "address": new.row.address,
                "region": new.row.region,
                "zone": new.row.zone,
                "host": new.row.host,
                "previous_role": previous_role,
            });
            Ok((
                pb::CacheReplica {
                    cluster_id: cluster_id.to_string(),
                    cache: Some(endpoint(&new.row)),
                    role: "cache".to_string(),
                    existed: previous_role.as_deref() == Some("cache"),
                },
                details,
            ))
        },
    )
    .await
}

/// `RemoveCacheReplica` (fenced, `cluster.remove-cache`; platform
/// principals): retires a cache replica; its `cache/<id>` shard is
/// published once more, assigning nothing. `NOT_FOUND` unless it is a
/// cache replica of the cluster (`STORAGE_ROLE` for a voter or learner).
#[tracing::instrument(skip_all, fields(cluster_id = crate::audit::field(&request.cluster_id)))]
pub async fn remove(
    ctx: &Context,
    principal: &Principal,
    request: &pb::RemoveCacheReplicaRequest,
) -> Result<pb::CacheReplica> {
    let action = action(
        principal,
        ACTION_REMOVE_CACHE,
        &request.cluster_id,
        &request.node_id,
    );
    let checked = principal.require_platform().and_then(|()| {
        Ok((
            ClusterId::new(request.cluster_id.as_str())?,
            NodeId::new(request.node_id.as_str())?,
        ))
    });
    fencing::run(
        &ctx.pool,
        &ctx.authority,
        action,
        checked,
        async |tx, _fence, (cluster, node): (ClusterId, NodeId)| {
            let cluster_id = cluster.as_str();
            let row = match db::storage_nodes::get(tx, cluster_id, node.as_str()).await? {
                Some(row) if row.role == "cache" => row,
                Some(row) if row.role == "voter" || row.role == "learner" => {
                    return Err(not_a_cache(cluster_id, &row));
                }
                _ => {
                    return Err(Error::not_found(
                        "cache replica",
                        format!("{cluster_id}/{node}"),
                    ));
                }
            };
            if !db::storage_nodes::retire_cache(tx, cluster_id, node.as_str()).await? {
                return Err(Error::Internal(format!(
                    "cache replica {node} of {cluster_id} changed role during the transaction"
                )));
            }
            crate::snapshots::mark_placement_change(tx, cluster_id, &[Scope::Cache(node.clone())])
                .await?;
            check_cache_shards(tx, &cluster).await?;
            tracing::info!(cluster_id, node_id = %node, "cache replica removed");
            let details = serde_json::json!({ "node_id": node.as_str(), "address": row.address });
            Ok((
                pb::CacheReplica {
                    cluster_id: cluster_id.to_string(),
                    cache: Some(endpoint(&row)),
                    role: "retired".to_string(),
                    existed: true,
                },
                details,
            ))
        },
    )
    .await
}

/// `SetCachePolicy` (fenced, `cluster.cache-policy`; platform principals):
/// how many cache replicas hold each node's scopes, 0 to
/// [`CACHE_REPLICAS_MAX`] (`OVERSIZE` above).
#[tracing::instrument(skip_all, fields(cluster_id = crate::audit::field(&request.cluster_id)))]
pub async fn set_policy(
    ctx: &Context,
    principal: &Principal,
    request: &pb::SetCachePolicyRequest,
) -> Result<pb::CachePolicy> {
    let action = action(
        principal,
        ACTION_CACHE_POLICY,
        &request.cluster_id,
        &request.replicas.to_string(),
    );
    let checked = principal.require_platform().and_then(|()| {
        let cluster = ClusterId::new(request.cluster_id.as_str())?;
        let replicas = usize::try_from(request.replicas).unwrap_or(usize::MAX);
        if replicas > CACHE_REPLICAS_MAX {
            return Err(Error::Oversize {
                what: "cache replicas per node",
                limit: CACHE_REPLICAS_MAX,
                got: replicas,
            });
        }
        Ok((cluster, request.replicas))
    });
    fencing::run(
        &ctx.pool,
        &ctx.authority,
        action,
        checked,
        async |tx, _fence, (cluster, replicas): (ClusterId, u32)| {
            let cluster_id = cluster.as_str();
            let previous = db::clusters::cache_replicas(tx, cluster_id)
                .await?
                .ok_or_else(|| Error::not_found("cluster", cluster_id))?;
            let column = i32::try_from(replicas)
                .map_err(|_| Error::invalid("cache replicas out of range"))?;
            db::clusters::set_cache_replicas(tx, cluster_id, column).await?;
            crate::snapshots::mark_placement_change(tx, cluster_id, &[]).await?;
            check_cache_shards(tx, &cluster).await?;
            let caches = db::storage_nodes::cache_ids(tx, cluster_id).await?.len();
            tracing::info!(cluster_id, replicas, previous, caches, "cache policy set");
            let previous = u32::try_from(previous).unwrap_or(0);
            Ok((
                pb::CachePolicy {
                    cluster_id: cluster_id.to_string(),
                    replicas,
                    previous_replicas: previous,
                    caches: u32::try_from(caches).unwrap_or(u32::MAX),
                },
                serde_json::json!({ "replicas": replicas, "previous": previous }),
            ))
        },
    )
    .await
}

/// `SetNodeLocation` (fenced, `node.set-location`; platform principals):
/// the region and zone a node agent lives in, which decide its cache
/// replicas. `NO_MEMBERSHIP` unless the node is an active member;
/// `STORAGE_ROLE` for a storage node (its labels are its failure domain).
#[tracing::instrument(
    skip_all,
    fields(
        cluster_id = crate::audit::field(&request.cluster_id),
        node_id = crate::audit::field(&request.node_id),
    )
)]
pub async fn set_location(
    ctx: &Context,
    principal: &Principal,
    request: &pb::SetNodeLocationRequest,
) -> Result<pb::NodeLocation> {
    let action = action(
        principal,
        ACTION_SET_LOCATION,
        &request.cluster_id,
        &request.node_id,
    );
    let checked = principal.require_platform().and_then(|()| {
        let cluster = ClusterId::new(request.cluster_id.as_str())?;
        let node = NodeId::new(request.node_id.as_str())?;
        check_label("region", &request.region)?;
        check_label("zone", &request.zone)?;
        Ok((cluster, node))
    });
    fencing::run(
        &ctx.pool,
        &ctx.authority,
        action,
        checked,
        async |tx, _fence, (cluster, node): (ClusterId, NodeId)| {
            let cluster_id = cluster.as_str();
            if let Some(row) = db::storage_nodes::get(tx, cluster_id, node.as_str()).await? {
                return Err(Error::StorageRole {
                    cluster: cluster_id.to_string(),
                    node: row.node_id,
                    role: row.role,
                    why: "a storage node's location is its failure domain \
                          (`rapctl cluster add-cache --node <id>=<host:port>,zone=..`)",
                });
            }
            let (region, zone) = (request.region.as_str(), request.zone.as_str());
            if !db::nodes::set_location(tx, cluster_id, node.as_str(), region, zone).await? {
                return Err(Error::NoMembership {
                    cluster: cluster_id.to_string(),
                    node: node.to_string(),
                });
            }
            crate::snapshots::mark_node_change(tx, cluster_id, node.as_str(), &[]).await?;
            check_cache_shards(tx, &cluster).await?;
            tracing::info!(cluster_id, node_id = %node, region, zone, "node location set");
            Ok((
                pb::NodeLocation {
                    cluster_id: cluster_id.to_string(),
                    node_id: node.to_string(),
                    region: region.to_string(),
                    zone: zone.to_string(),
                },
                serde_json::json!({ "region": region, "zone": zone }),
            ))
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_addresses() {
        for good in ["", "eu-west-1a", "z1", "EU_1.a"] {
            assert!(check_label("zone", good).is_ok(), "{good:?}");
        }
        for bad in ["a b", "zone=1", "a,b", "ü", "a\n"] {
            assert_eq!(
                check_label("zone", bad).map_err(|e| e.code()),
                Err("INVALID_ARGUMENT"),
                "{bad:?}"
            );
        }
        let long = "a".repeat(LOCATION_LABEL_BYTES_MAX + 1);
        assert_eq!(
            check_label("zone", &long).map_err(|e| e.code()),
            Err("OVERSIZE")
        );
        for good in ["10.0.0.1:7001", "cache-1.example:7001", "[::1]:7001"] {
            assert!(check_address(good).is_ok(), "{good:?}");
        }
        for bad in ["", "host", ":7001", "h:0", "h:70000", "h :1", "[]:1"] {
            assert!(check_address(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}:1", "h".repeat(STORAGE_ADDRESS_BYTES_MAX));
        assert_eq!(check_address(&long).map_err(|e| e.code()), Err("OVERSIZE"));
    }
}
