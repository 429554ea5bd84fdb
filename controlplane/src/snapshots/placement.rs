//! `GetPlacement`: where a cluster's shards are held and what it
//! survives, from PostgreSQL (it answers while the group is down too).
//!
//! Every voter and learner holds every shard of its cluster (the Raft
//! state machine); a cache replica holds the scopes placement assigns it
//! (its `cache/<id>` shard: the readable scopes of the nodes it serves, as
//! the snapshot compiler computes them, and that shard itself). A scope
//! stays readable while one holder of it is up (a minority serves reads,
//! saying so); writes need a quorum of voters.
//!
//! `without` names storage nodes to count as lost (`region=R`, `zone=Z`,
//! `host=H`, `node=ID`), so an operator sees before a maintenance what
//! losing a domain would leave unreadable or unwritable: a published scope
//! is unreadable when every voter and learner is lost and every cache
//! replica holding it too.

use crate::audit::Action;
use crate::auth::Principal;
use crate::context::Context;
use crate::db;
use crate::error::{Error, Result};
use crate::limits::{PLACEMENT_SCOPES_MAX, PLACEMENT_UNREADABLE_LISTED_MAX};
use crate::snapshots::compile::{ClusterRows, Compiler};
use rap_authority::placement::{Candidate, failure_tolerance};
use rap_proto::ids::ClusterId;
use rap_proto::pb;
use std::collections::{BTreeMap, BTreeSet};

/// Audit action of a (refused) placement report.
pub const ACTION_PLACEMENT: &str = "cluster.placement";
/// Most `without` selectors in one request.
pub const WITHOUT_MAX: usize = 32;

/// One `without` selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Lost {
    Region(String),
    Zone(String),
    Host(String),
    Node(String),
}

impl Lost {
    fn parse(text: &str) -> Result<Lost> {
        let (label, value) = text.split_once('=').ok_or_else(|| {
            Error::invalid(format!(
                "--without {:?}: expected region=R, zone=Z, host=H or node=ID",
                crate::audit::cut(text, 80)
            ))
        })?;
        if value.is_empty() || value.len() > crate::limits::TEXT_BYTES_MAX {
            return Err(Error::invalid(format!(
                "--without {label}=: a value of 1 to {} bytes",
                crate::limits::TEXT_BYTES_MAX
            )));
        }
        let value = value.to_string();
        match label {
            "region" => Ok(Lost::Region(value)),
            "zone" => Ok(Lost::Zone(value)),
            "host" => Ok(Lost::Host(value)),
            "node" => Ok(Lost::Node(value)),
            other => Err(Error::invalid(format!(
                "--without {:?}: the label is one of region, zone, host, node",
                crate::audit::cut(other, 40)
            ))),
        }
    }

    fn matches(&self, node: &db::storage_nodes::StorageNode) -> bool {
        match self {
            Lost::Region(r) => &node.region == r,
            Lost::Zone(z) => &node.zone == z,
            Lost::Host(h) => &node.host == h,
            Lost::Node(n) => &node.node_id == n,
        }
    }
}

/// The placement report of `request.cluster_id` (platform principals).
pub async fn report(
    ctx: &Context,
    principal: &Principal,
    request: &pb::GetPlacementRequest,
) -> Result<pb::PlacementReport> {
    let action = Action::new(
        principal.actor(),
        ACTION_PLACEMENT,
        Some(&request.cluster_id),
        request.without.join(","),
    );
    let checked = principal.require_platform().and_then(|()| {
        ClusterId::new(request.cluster_id.as_str())?;
        if request.without.len() > WITHOUT_MAX {
            return Err(Error::Oversize {
                what: "--without selectors",
                limit: WITHOUT_MAX,
                got: request.without.len(),
            });
        }
        request
            .without
            .iter()
            .map(|w| Lost::parse(w))
            .collect::<Result<Vec<_>>>()
    });
    let lost = crate::audit::refuse_unless(&ctx.pool, &action, checked).await?;
    let cluster = ClusterId::new(request.cluster_id.as_str())?;
    let cluster_id = cluster.as_str();
    let mut conn = ctx.pool.acquire().await?;
    crate::clusters::require_exists(&mut conn, cluster_id).await?;
    let storage = db::storage_nodes::not_retired(&mut conn, cluster_id).await?;
    let limit = i64::try_from(PLACEMENT_SCOPES_MAX).unwrap_or(i64::MAX - 1) + 1;
    let scopes = db::snapshots::published_scopes(&mut conn, cluster_id, limit).await?;
    if scopes.len() > PLACEMENT_SCOPES_MAX {
        return Err(Error::Oversize {
            what: "published scopes of one placement report",
            limit: PLACEMENT_SCOPES_MAX,
            got: scopes.len(),
        });
    }
    let compiler = Compiler::new(ClusterRows::load(&mut conn, &cluster).await?);
    let per_node = db::clusters::cache_replicas(&mut conn, cluster_id)
        .await?
        .unwrap_or(0);
    let held = cache_holdings(&compiler);
    Ok(build(
        cluster_id,
        &storage,
        &scopes,
        &held,
        u32::try_from(per_node).unwrap_or(0),
        &lost,
    ))
}

/// Cache replica → the scopes it holds: its assignment, and its own
/// `cache/<id>` shard.
fn cache_holdings(compiler: &Compiler) -> BTreeMap<String, BTreeSet<String>> {
    compiler
        .cache_ids()
        .map(|cache| {
            let mut scopes = compiler.cache_scopes(cache).unwrap_or_default();
            scopes.insert(format!("cache/{cache}"));
            (cache.to_string(), scopes)
        })
        .collect()
}

/// The kind of a scope: its first segment (`node`, `peers`, `role`, `org`,
/// `trust`, `cache`).
fn class_of(scope: &str) -> &str {
    scope.split('/').next().unwrap_or(scope)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn build(
    cluster_id: &str,
    storage: &[db::storage_nodes::StorageNode],
    scopes: &[String],
    caches: &BTreeMap<String, BTreeSet<String>>,
    cache_replicas_per_node: u32,
    lost: &[Lost],
) -> pb::PlacementReport {
    let is_lost = |node: &db::storage_nodes::StorageNode| lost.iter().any(|l| l.matches(node));
    // Voters and learners hold the whole state machine.
    let full: Vec<&db::storage_nodes::StorageNode> = storage
        .iter()
        .filter(|s| s.role == "voter" || s.role == "learner")
        .collect();
    let voters: Vec<&db::storage_nodes::StorageNode> =
        storage.iter().filter(|s| s.role == "voter").collect();
    let candidates: Vec<Candidate> = voters
        .iter()
        .map(|v| Candidate {
            node_id: v.node_id.clone(),
            region: v.region.clone(),
            zone: v.zone.clone(),
            host: v.host.clone(),
        })
        .collect();
    let tolerance = failure_tolerance(&candidates);
    let voters_left = voters.iter().filter(|v| !is_lost(v)).count();
    let full_left = full.iter().any(|h| !is_lost(h));
    let cache_rows: Vec<&db::storage_nodes::StorageNode> =
        storage.iter().filter(|s| s.role == "cache").collect();
    let cache_lost: BTreeMap<&str, bool> = cache_rows
        .iter()
        .map(|c| (c.node_id.as_str(), is_lost(c)))
        .collect();
    // Caches by node id, with what each holds (nothing for a cache the
    // compiler does not know).
    let empty = BTreeSet::new();
    let holdings: Vec<(&str, bool, &BTreeSet<String>)> = cache_lost
        .iter()
        .map(|(id, lost)| (*id, *lost, caches.get(*id).unwrap_or(&empty)))
        .collect();

    let mut by_class: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for scope in scopes {
        by_class.entry(class_of(scope)).or_default().push(scope);
    }
    let mut unreadable: Vec<&String> = Vec::new();
    let classes: Vec<pb::PlacementClass> = by_class
        .iter()
        .map(|(class, scopes)| {
            let mut holders: Vec<String> = full.iter().map(|h| h.node_id.clone()).collect();
            let mut holders_left = full.iter().filter(|h| !is_lost(h)).count();
            for (id, lost, held) in &holdings {
                if scopes.iter().any(|s| held.contains(*s)) {
                    holders.push(id.to_string());
                    holders_left += usize::from(!lost);
                }
            }
            let mut class_unreadable = 0;
            for scope in scopes {
                let readable = full_left
                    || holdings
                        .iter()
                        .any(|(_, lost, held)| !lost && held.contains(*scope));
                if !readable {
                    class_unreadable += 1;
                    unreadable.push(scope);
                }
            }
            pb::PlacementClass {
                class: class.to_string(),
                scopes: count(scopes.len()),
                holders,
                holders_left: count(holders_left),
                unreadable: count(class_unreadable),
            }
        })
        .collect();
    unreadable.sort();
    pb::PlacementReport {
        cluster_id: cluster_id.to_string(),
        holders: storage
            .iter()
            .map(|s| pb::PlacementHolder {
                node_id: s.node_id.clone(),
                domain: Some(pb::FailureDomain {
                    region: s.region.clone(),
                    zone: s.zone.clone(),
                    host: s.host.clone(),
                }),
                role: s.role.clone(),
                lost: is_lost(s),
            })
            .collect(),
        classes,
        write_tolerance: tolerance.to_string(),
        voters: count(voters.len()),
        voters_left: count(voters_left),
        writes_survive: !voters.is_empty()
            && voters_left >= rap_authority::partition::quorum(voters.len()),
        unreadable_scopes: count(unreadable.len()),
        cache_replicas: count(cache_rows.len()),
        cache_replicas_per_node,
        unreadable: unreadable
            .into_iter()
            .take(PLACEMENT_UNREADABLE_LISTED_MAX)
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, zone: &str, role: &str) -> db::storage_nodes::StorageNode {
        db::storage_nodes::StorageNode {
            node_id: id.into(),
            address: "127.0.0.1:1".into(),
            region: "r1".into(),
            zone: zone.into(),
            host: id.into(),
            role: role.into(),
        }
    }

    fn scopes(nodes: usize) -> Vec<String> {
        let mut scopes: Vec<String> = (0..nodes).map(|i| format!("node/n{i:02}")).collect();
        scopes.push("trust/revocations".into());
        scopes.push("trust/root".into());
        scopes
    }

    // Goal: the report says what losing a domain leaves: three voters in
    // three zones survive any one zone for writes and reads; two voters in
    // one zone do not survive that zone for writes, but reads go on; losing
    // every holder leaves every scope unreadable. Method: build reports
    // for fixed storage sets and `without` selectors.
    #[test]
    fn losing_a_domain_is_reported_as_it_would_be() {
        let scopes = scopes(20);
        let none = BTreeMap::new();
        let spread = [
            node("s1", "z1", "voter"),
            node("s2", "z2", "voter"),
            node("s3", "z3", "voter"),
        ];
        let r = build(
            "c1",
            &spread,
            &scopes,
            &none,
            2,
            &[Lost::parse("zone=z2").unwrap()],
        );
        assert_eq!(r.write_tolerance, "survives loss of 1 zone");
        assert!(r.writes_survive);
        assert_eq!((r.voters, r.voters_left, r.unreadable_scopes), (3, 2, 0));
        assert_eq!(r.classes[0].holders_left, 2);
        assert!(r.holders.iter().any(|h| h.node_id == "s2" && h.lost));
        assert_eq!((r.cache_replicas, r.cache_replicas_per_node), (0, 2));

        let lopsided = [
            node("s1", "z1", "voter"),
            node("s2", "z1", "voter"),
            node("s3", "z2", "voter"),
        ];
        let r = build(
            "c1",
            &lopsided,
            &scopes,
            &none,
            2,
            &[Lost::parse("zone=z1").unwrap()],
        );
        assert!(!r.writes_survive, "one voter of three is no quorum");
        assert_eq!(r.unreadable_scopes, 0, "the survivor still serves reads");

        let all = [
            Lost::parse("zone=z1").unwrap(),
            Lost::parse("zone=z2").unwrap(),
        ];
        let r = build("c1", &lopsided, &scopes, &none, 2, &all);
        assert_eq!(r.unreadable_scopes, 22);
        assert_eq!(r.unreadable.len(), 22);
        assert!(Lost::parse("rack=1").is_err());
        assert!(Lost::parse("zone=").is_err());
    }

    // Goal: with the voters lost, exactly the scopes no surviving cache
    // holds are unreadable, counted per class and named; a class lists the
    // caches that hold any of its scopes. Method: voters in z1, cache k2
    // (z2) holding node/n00 and the trust scopes, cache k3 (z3) holding
    // node/n01; lose z1, then z1 and z3.
    #[test]
    fn surviving_caches_keep_their_scopes_readable() {
        let scopes = scopes(3);
        let storage = [
            node("s1", "z1", "voter"),
            node("s2", "z1", "voter"),
            node("s3", "z1", "voter"),
            node("k2", "z2", "cache"),
            node("k3", "z3", "cache"),
        ];
        let held = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let caches = BTreeMap::from([
            (
                "k2".to_string(),
                held(&["node/n00", "trust/revocations", "trust/root"]),
            ),
            (
                "k3".to_string(),
                held(&["node/n01", "trust/revocations", "trust/root"]),
            ),
        ]);
        let r = build(
            "c1",
            &storage,
            &scopes,
            &caches,
            2,
            &[Lost::parse("zone=z1").unwrap()],
        );
        assert_eq!(r.cache_replicas, 2);
        assert!(!r.writes_survive);
        assert_eq!(r.unreadable, ["node/n02"], "no cache holds n02");
        let node_class = &r.classes[0];
        assert_eq!(node_class.class, "node");
        assert_eq!(node_class.holders, ["s1", "s2", "s3", "k2", "k3"]);
        assert_eq!((node_class.holders_left, node_class.unreadable), (2, 1));

        let r = build(
            "c1",
            &storage,
            &scopes,
            &caches,
            2,
            &[
                Lost::parse("zone=z1").unwrap(),
                Lost::parse("zone=z3").unwrap(),
            ],
        );
        assert_eq!(r.unreadable, ["node/n01", "node/n02"]);
        assert_eq!(r.classes[1].unreadable, 0, "k2 still serves trust/");
    }
}
