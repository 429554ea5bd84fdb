//! What `rapctl cluster placement|add-cache|remove-cache` print: the
//! placement report and cache replicas.

use crate::cluster::{domain_json, domain_text};
use crate::output::Format;
use crate::table::{Table, or_dash, print_object};
use rap_proto::pb;
use serde_json::json;

/// Prints a registered or removed cache replica.
pub fn print_cache(format: Format, replica: &pb::CacheReplica) {
    let cache = replica.cache.clone().unwrap_or_default();
    let rows = [
        ("cluster", replica.cluster_id.clone()),
        ("cache replica", cache.node_id.clone()),
        ("address", or_dash(&cache.address)),
        ("region/zone/host", domain_text(cache.domain.as_ref())),
        ("role", replica.role.clone()),
        (
            "was registered",
            if replica.existed { "yes" } else { "no" }.to_string(),
        ),
    ];
    let json = json!({
        "cluster_id": replica.cluster_id,
        "node_id": cache.node_id,
        "address": cache.address,
        "domain": domain_json(cache.domain.as_ref()),
        "role": replica.role,
        "existed": replica.existed,
    });
    print_object(format, &rows, &json);
}

/// Prints a placement report: the holders, then each kind of scope, then
/// what the cluster survives.
pub fn print_placement(format: Format, report: &pb::PlacementReport) {
    let domain = |d: &Option<pb::FailureDomain>| {
        d.as_ref()
            .map(|d| {
                format!(
                    "{}/{}/{}",
                    or_dash(&d.region),
                    or_dash(&d.zone),
                    or_dash(&d.host)
                )
            })
            .unwrap_or_else(|| "-".to_string())
    };
    let json = json!({
        "cluster_id": report.cluster_id,
        "holders": report.holders.iter().map(|h| json!({
            "node_id": h.node_id,
            "domain": domain(&h.domain),
            "role": h.role,
            "lost": h.lost,
        })).collect::<Vec<_>>(),
        "classes": report.classes.iter().map(|c| json!({
            "class": c.class,
            "scopes": c.scopes,
            "holders": c.holders,
            "holders_left": c.holders_left,
            "unreadable": c.unreadable,
        })).collect::<Vec<_>>(),
        "write_tolerance": report.write_tolerance,
        "voters": report.voters,
        "voters_left": report.voters_left,
        "writes_survive": report.writes_survive,
        "unreadable_scopes": report.unreadable_scopes,
        "unreadable": report.unreadable,
        "cache_replicas": report.cache_replicas,
        "cache_replicas_per_node": report.cache_replicas_per_node,
    });
    if format == Format::Json {
        crate::outln!("{json:#}");
        return;
    }
    let mut holders = Table::new(&["STORAGE NODE", "REGION/ZONE/HOST", "ROLE", "LOST"]);
    for h in &report.holders {
        holders.row(vec![
            h.node_id.clone(),
            domain(&h.domain),
            h.role.clone(),
            if h.lost { "yes" } else { "-" }.to_string(),
        ]);
    }
    holders.print();
    crate::outln!();
    let mut classes = Table::new(&["SCOPES", "COUNT", "HELD BY", "HOLDERS LEFT", "UNREADABLE"]);
    for c in &report.classes {
        classes.row(vec![
            format!("{}/...", c.class),
            c.scopes.to_string(),
            c.holders.join(","),
            c.holders_left.to_string(),
            c.unreadable.to_string(),
        ]);
    }
    classes.print();
    crate::outln!();
    crate::outln!(
        "writes: {} voters, {}",
        report.voters,
        report.write_tolerance
    );
    crate::outln!(
        "reads: {} cache replicas, {} per node (a scope is readable while a voter, a learner \
         or a cache holding it is up)",
        report.cache_replicas,
        report.cache_replicas_per_node
    );
    crate::outln!(
        "after the loss: {} of {} voters left, writes {}; {} scopes unreadable",
        report.voters_left,
        report.voters,
        if report.writes_survive {
            "go on"
        } else {
            "stop (no quorum)"
        },
        report.unreadable_scopes,
    );
    if !report.unreadable.is_empty() {
        let more = report.unreadable_scopes as usize > report.unreadable.len();
        crate::outln!(
            "unreadable: {}{}",
            report.unreadable.join(", "),
            if more { ", ..." } else { "" }
        );
    }
}
