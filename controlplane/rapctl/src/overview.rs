//! `rapctl overview`: the platform at a glance, every cluster's state and
//! the risks to look at first.

use crate::client::{self, Conn, all_pages, page};
use crate::output::Format;
use crate::table::{Table, time};
use anyhow::Result;
use rap_proto::pb;
use serde_json::{Value, json};

/// `rapctl overview`.
#[derive(clap::Args, Debug)]
pub struct OverviewArgs {
    #[command(flatten)]
    conn: Conn,
}

fn counts_json(n: &pb::NodeHealthCounts) -> Value {
    json!({
        "active": n.active,
        "healthy": n.healthy,
        "degraded": n.degraded,
        "unhealthy": n.unhealthy,
        "unknown": n.unknown,
        "stale": n.stale,
        "never_seen": n.never_seen,
    })
}

fn cluster_json(c: &pb::ClusterOverview) -> Value {
    json!({
        "cluster_id": c.cluster_id,
        "name": c.name,
        "authority_term": c.authority_term,
        "authority_state": c.authority_state,
        "authority_observed_at_unix_ms": c.authority_observed_at_unix_ms,
        "nodes": counts_json(&c.nodes.unwrap_or_default()),
        "pending_join_requests": c.pending_join_requests,
        "roles": c.roles.iter().map(|r| json!({
            "role": r.role,
            "holders": r.holders,
            "healthy_holders": r.healthy_holders,
        })).collect::<Vec<_>>(),
        "certificates_expired": c.certificates_expired,
        "certificates_expiring": c.certificates_expiring,
        "risks": c.risks.iter().map(risk_json).collect::<Vec<_>>(),
    })
}

fn risk_json(r: &pb::Risk) -> Value {
    json!({"cluster_id": r.cluster_id, "kind": r.kind, "detail": r.detail})
}

/// Runs `rapctl overview`.
pub async fn run_overview(args: OverviewArgs, format: Format) -> Result<()> {
    let s = client::connect(&args.conn, "overview").await?;
    let mut last = pb::Overview::default();
    let clusters = all_pages(async |token| {
        let answer = s
            .client
            .clone()
            .get_overview(pb::GetOverviewRequest { page: page(&token) })
            .await
            .map_err(|e| s.fail(e))?
            .into_inner();
        let next = answer.next_page_token.clone();
        let clusters = answer.clusters.clone();
        last = answer;
        Ok((clusters, next))
    })
    .await?;
    let totals = last.nodes_total.unwrap_or_default();
    match format {
        Format::Json => crate::outln!(
            "{:#}",
            json!({
                "checked_at_unix_ms": last.checked_at_unix_ms,
                "clusters_total": last.clusters_total,
                "nodes_total": counts_json(&totals),
                "pending_join_requests_total": last.pending_join_requests_total,
                "risks_total": last.risks_total,
                "stale_after_seconds": last.stale_after_seconds,
                "certificates_soon_seconds": last.certificates_soon_seconds,
                "join_request_waiting_seconds": last.join_request_waiting_seconds,
                "view_fresh_seconds": last.view_fresh_seconds,
                "clusters": clusters.iter().map(cluster_json).collect::<Vec<_>>(),
            })
        ),
        Format::Table => {
            crate::outln!(
                "{} cluster(s); agents: {} active, {} healthy, {} degraded, {} unhealthy, \
                 {} stale, {} never seen; {} join request(s) pending; {} risk(s)",
                last.clusters_total,
                totals.active,
                totals.healthy,
                totals.degraded,
                totals.unhealthy,
                totals.stale,
                totals.never_seen,
                last.pending_join_requests_total,
                last.risks_total,
            );
            crate::outln!();
            let mut table = Table::new(&[
                "CLUSTER",
                "AUTHORITY",
                "TERM",
                "SEEN",
                "HEALTHY/ACTIVE",
                "STALE",
                "UNHEALTHY",
                "JOINS",
                "CERTS EXPIRED",
                "CERTS SOON",
                "RISKS",
            ]);
            for c in &clusters {
                let n = c.nodes.unwrap_or_default();
                table.row(vec![
                    c.cluster_id.clone(),
                    c.authority_state.clone(),
                    c.authority_term.to_string(),
                    time(c.authority_observed_at_unix_ms),
                    format!("{}/{}", n.healthy, n.active),
                    n.stale.to_string(),
                    n.unhealthy.to_string(),
                    c.pending_join_requests.to_string(),
                    c.certificates_expired.to_string(),
                    c.certificates_expiring.to_string(),
                    c.risks.len().to_string(),
                ]);
            }
            table.print();
            let risks: Vec<&pb::Risk> = clusters.iter().flat_map(|c| &c.risks).collect();
            if !risks.is_empty() {
                crate::outln!();
                let mut table = Table::new(&["CLUSTER", "RISK", "DETAIL"]);
                for r in risks {
                    table.row(vec![r.cluster_id.clone(), r.kind.clone(), r.detail.clone()]);
                }
                table.print();
            }
        }
    }
    Ok(())
}
