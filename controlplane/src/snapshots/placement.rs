//! `GetPlacement`: where a cluster's shards are held and what it
//! survives, from PostgreSQL (it answers while the group is down too).
//!
//! Today every voter and learner holds every shard of its cluster (the
//! Raft state machine), so each kind of scope is held by all of them: a
//! scope stays readable while one holder is up (a minority serves reads,
//! saying so), and writes need a quorum of voters. Cache replicas, which
//! will hold only the scopes placement assigns them, are not built yet;
//! the report counts them as zero.
//!
//! `without` names storage nodes to count as lost (`region=R`, `zone=Z`,
//! `host=H`, `node=ID`), so an operator sees before a maintenance what
//! losing a domain would leave unreadable or unwritable.

use crate::audit::Action;
use crate::auth::Principal;
use crate::context::Context;
use crate::db;
use crate::error::{Error, Result};
use rap_authority::placement::{Candidate, failure_tolerance};
use rap_proto::ids::ClusterId;
use rap_proto::pb;

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
    let mut conn = ctx.pool.acquire().await?;
    crate::clusters::require_exists(&mut conn, &request.cluster_id).await?;
    let storage = db::storage_nodes::not_retired(&mut conn, &request.cluster_id).await?;
    let counts = db::snapshots::scope_counts(&mut conn, &request.cluster_id).await?;
    Ok(build(&request.cluster_id, &storage, &counts, &lost))
}

fn build(
    cluster_id: &str,
    storage: &[db::storage_nodes::StorageNode],
    counts: &[(String, i64)],
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
    let holders_left = full.iter().filter(|h| !is_lost(h)).count();
    let holders: Vec<String> = full.iter().map(|h| h.node_id.clone()).collect();
    let classes: Vec<pb::PlacementClass> = counts
        .iter()
        .map(|(class, scopes)| pb::PlacementClass {
            class: class.clone(),
            scopes: u32::try_from(*scopes).unwrap_or(u32::MAX),
            holders: holders.clone(),
            holders_left: u32::try_from(holders_left).unwrap_or(u32::MAX),
        })
        .collect();
    let unreadable = if holders_left == 0 {
        classes.iter().map(|c| c.scopes).sum()
    } else {
        0
    };
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
        voters: u32::try_from(voters.len()).unwrap_or(u32::MAX),
        voters_left: u32::try_from(voters_left).unwrap_or(u32::MAX),
        writes_survive: !voters.is_empty()
            && voters_left >= rap_authority::partition::quorum(voters.len()),
        unreadable_scopes: unreadable,
        cache_replicas: 0,
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

    // Goal: the report says what losing a domain leaves: three voters in
    // three zones survive any one zone for writes and reads; two voters in
    // one zone do not survive that zone for writes, but reads go on; losing
    // every holder leaves every scope unreadable. Method: build reports
    // for fixed storage sets and `without` selectors.
    #[test]
    fn losing_a_domain_is_reported_as_it_would_be() {
        let counts = vec![("node".to_string(), 20), ("trust".to_string(), 2)];
        let spread = [
            node("s1", "z1", "voter"),
            node("s2", "z2", "voter"),
            node("s3", "z3", "voter"),
        ];
        let r = build("c1", &spread, &counts, &[Lost::parse("zone=z2").unwrap()]);
        assert_eq!(r.write_tolerance, "survives loss of 1 zone");
        assert!(r.writes_survive);
        assert_eq!((r.voters, r.voters_left, r.unreadable_scopes), (3, 2, 0));
        assert_eq!(r.classes[0].holders_left, 2);
        assert!(r.holders.iter().any(|h| h.node_id == "s2" && h.lost));

        let lopsided = [
            node("s1", "z1", "voter"),
            node("s2", "z1", "voter"),
            node("s3", "z2", "voter"),
        ];
        let r = build("c1", &lopsided, &counts, &[Lost::parse("zone=z1").unwrap()]);
        assert!(!r.writes_survive, "one voter of three is no quorum");
        assert_eq!(r.unreadable_scopes, 0, "the survivor still serves reads");

        let all = [
            Lost::parse("zone=z1").unwrap(),
            Lost::parse("zone=z2").unwrap(),
        ];
        let r = build("c1", &lopsided, &counts, &all);
        assert_eq!(r.unreadable_scopes, 22);
        assert!(Lost::parse("rack=1").is_err());
        assert!(Lost::parse("zone=").is_err());
    }
}
