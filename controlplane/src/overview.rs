//! The platform at a glance (`GetOverview`, `rapctl overview`, the
//! console's first page): per cluster the authority group's state, agent
//! nodes by health, pending join requests, role coverage, certificates
//! ending, and the risks an operator should look at; totals over every
//! cluster. Read-only; platform principals only.
//!
//! Each figure is one grouped query through its table's owner in `db`,
//! over every cluster at once (a fixed number of queries whatever the
//! number of clusters); the totals are over all clusters, the page only
//! picks which clusters are shown.

use crate::auth::Principal;
use crate::context::Context;
use crate::db;
use crate::error::Result;
use crate::limits::HEARTBEAT_INTERVAL_DEFAULT;
use crate::page::Page;
use rap_proto::pb;
use rap_proto::time::UnixMillis;
use std::collections::BTreeMap;
use std::time::Duration;

/// An agent whose last heartbeat is older than this counts as stale
/// (three missed heartbeats).
pub const NODE_STALE_AFTER: Duration =
    Duration::from_secs(3 * HEARTBEAT_INTERVAL_DEFAULT.as_secs());
/// Certificates ending within this count as expiring, once their holder
/// is late renewing them ([`CERT_RENEWAL_OVERDUE_PERCENT`]).
pub const CERTIFICATES_SOON: Duration = Duration::from_secs(7 * 24 * 3600);
/// A node renews its certificate at two thirds of its lifetime
/// (`rap_core::tls::RENEW_AFTER_*`); one past this share of its lifetime
/// is late, and only then a risk: short-lived certificates that renew
/// themselves on time are not.
pub const CERT_RENEWAL_OVERDUE_PERCENT: u32 = 75;
const _: () = assert!(
    CERT_RENEWAL_OVERDUE_PERCENT * rap_core::tls::RENEW_AFTER_DENOMINATOR
        > 100 * rap_core::tls::RENEW_AFTER_NUMERATOR
);
/// A join request pending longer than this is a risk (someone should
/// review it).
pub const JOIN_REQUEST_WAITING: Duration = Duration::from_secs(24 * 3600);
/// Partition views older than this are not used for the authority state.
pub const VIEW_FRESH: Duration = Duration::from_secs(5 * 60);

/// `authority_state` before bootstrap.
pub const AUTHORITY_NONE: &str = "none";
/// `authority_state` without a recent view.
pub const AUTHORITY_UNKNOWN: &str = "unknown";

fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn health_pb(row: &db::nodes::HealthCounts) -> pb::NodeHealthCounts {
    pb::NodeHealthCounts {
        active: count(row.active),
        healthy: count(row.healthy),
        degraded: count(row.degraded),
        unhealthy: count(row.unhealthy),
        unknown: count(row.unknown),
        stale: count(row.stale),
        never_seen: count(row.never_seen),
    }
}

fn add(total: &mut pb::NodeHealthCounts, n: &pb::NodeHealthCounts) {
    total.active = total.active.saturating_add(n.active);
    total.healthy = total.healthy.saturating_add(n.healthy);
    total.degraded = total.degraded.saturating_add(n.degraded);
    total.unhealthy = total.unhealthy.saturating_add(n.unhealthy);
    total.unknown = total.unknown.saturating_add(n.unknown);
    total.stale = total.stale.saturating_add(n.stale);
    total.never_seen = total.never_seen.saturating_add(n.never_seen);
}

/// The group's state from its voters' recent views: a quorum seen by any
/// voter is `healthy` when every voter saw all of them, else `degraded`;
/// without one, `fenced` if a voter says so, else `minority`.
pub fn authority_state(voters: usize, views: &[&db::partitions::VoterView]) -> &'static str {
    let has = |view: &str| views.iter().any(|v| v.view == view);
    if views.is_empty() {
        AUTHORITY_UNKNOWN
    } else if has("healthy") || has("degraded") {
        if views.len() >= voters && views.iter().all(|v| v.view == "healthy") {
            "healthy"
        } else {
            "degraded"
        }
    } else if has("fenced") {
        "fenced"
    } else {
        "minority"
    }
}

/// Everything known of the clusters, grouped by cluster id.
struct Figures {
    health: BTreeMap<String, pb::NodeHealthCounts>,
    pending: BTreeMap<String, db::join::PendingCounts>,
    roles: BTreeMap<String, Vec<db::roles::Coverage>>,
    certificates: BTreeMap<String, db::nodes::CertificateCounts>,
    views: BTreeMap<String, Vec<db::partitions::VoterView>>,
    voters: BTreeMap<String, i64>,
}

impl Figures {
    /// One cluster's overview, with its risks.
    fn of(&self, row: db::clusters::ClusterOverview) -> pb::ClusterOverview {
        let id = &row.cluster_id;
        let voters = self.voters.get(id).copied().unwrap_or(0);
        let views: Vec<&db::partitions::VoterView> =
            self.views.get(id).into_iter().flatten().collect();
        let term = row
            .authority_term
            .and_then(|t| u64::try_from(t).ok())
            .unwrap_or(0);
        let authority_state = if term == 0 && voters == 0 {
            AUTHORITY_NONE
        } else {
            authority_state(usize::try_from(voters).unwrap_or(0), &views)
        };
        let certificates = self.certificates.get(id);
        let pending = self.pending.get(id);
        let mut cluster = pb::ClusterOverview {
            cluster_id: id.clone(),
            name: row.name.clone(),
            authority_term: term,
            authority_state: authority_state.to_string(),
            authority_observed_at_unix_ms: views
                .iter()
                .map(|v| v.observed_at_unix_ms)
                .max()
                .unwrap_or(0),
            nodes: Some(self.health.get(id).copied().unwrap_or_default()),
            pending_join_requests: pending.map_or(0, |p| count(p.pending)),
            roles: self
                .roles
                .get(id)
                .into_iter()
                .flatten()
                .map(|r| pb::RoleCoverage {
                    role: r.role.clone(),
                    holders: count(r.holders),
                    healthy_holders: count(r.healthy_holders),
                })
                .collect(),
            certificates_expired: certificates.map_or(0, |c| count(c.expired)),
            certificates_expiring: certificates.map_or(0, |c| count(c.expiring)),
            risks: Vec::new(),
        };
        cluster.risks = risks_of(&cluster, pending.map_or(0, |p| p.waiting));
        cluster
    }
}

/// The risks of one cluster, in a fixed order.
fn risks_of(c: &pb::ClusterOverview, waiting: i64) -> Vec<pb::Risk> {
    let mut risks = Vec::new();
    let mut risk = |kind: &str, detail: String| {
        risks.push(pb::Risk {
            cluster_id: c.cluster_id.clone(),
            kind: kind.to_string(),
            detail,
        });
    };
    match c.authority_state.as_str() {
        AUTHORITY_NONE => risk(
            "NO_AUTHORITY_GROUP",
            "not bootstrapped: nothing can be published".into(),
        ),
        "degraded" => risk(
            "AUTHORITY_DEGRADED",
            "a quorum, but some voters are unreachable".into(),
        ),
        "minority" => risk(
            "AUTHORITY_MINORITY",
            "no voter sees a quorum: writes are refused (NO_QUORUM)".into(),
        ),
        "fenced" => risk(
            "AUTHORITY_FENCED",
            "the voters seen are fenced by a newer term".into(),
        ),
        _ => {}
    }
    let nodes = c.nodes.unwrap_or_default();
    if nodes.stale > 0 {
        risk(
            "NODES_STALE",
            format!(
                "{} node(s) without a heartbeat for over {} s",
                nodes.stale,
                NODE_STALE_AFTER.as_secs()
            ),
        );
    }
    if nodes.unhealthy > 0 {
        risk(
            "NODES_UNHEALTHY",
            format!("{} node(s) report unhealthy", nodes.unhealthy),
        );
    }
    if nodes.never_seen > 0 {
        risk(
            "NODES_NEVER_SEEN",
            format!("{} node(s) never sent a heartbeat", nodes.never_seen),
        );
    }
    for role in c.roles.iter().filter(|r| r.healthy_holders == 0) {
        risk(
            "ROLE_UNCOVERED",
            format!(
                "{}: none of its {} holder(s) is healthy",
                role.role, role.holders
            ),
        );
    }
    if c.certificates_expired > 0 {
        risk(
            "CERTIFICATES_EXPIRED",
            format!(
                "{} active certificate(s) have expired",
                c.certificates_expired
            ),
        );
    }
    if c.certificates_expiring > 0 {
        risk(
            "CERTIFICATES_EXPIRING",
            format!(
                "{} certificate(s) end within {} days and were not renewed in time",
                c.certificates_expiring,
                CERTIFICATES_SOON.as_secs() / 86_400
            ),
        );
    }
    if waiting > 0 {
        risk(
            "JOIN_REQUESTS_WAITING",
            format!(
                "{waiting} join request(s) pending for over {} h",
                JOIN_REQUEST_WAITING.as_secs() / 3600
            ),
        );
    }
    risks
}

/// The overview of a page of clusters (by id), with totals over all of
/// them.
pub async fn overview(
    ctx: &Context,
    principal: &Principal,
    request: &pb::GetOverviewRequest,
) -> Result<pb::Overview> {
    principal.require_platform()?;
    // Requests past their review time are expired first, as the join
    // request list does.
    crate::enrollment::expire_stale(&ctx.pool).await?;
    let page = Page::from_pb(request.page.as_ref());
    let now = UnixMillis::now();
    let mut conn = ctx.pool.acquire().await?;
    let mut roles: BTreeMap<String, Vec<db::roles::Coverage>> = BTreeMap::new();
    for row in db::roles::coverage(&mut conn, NODE_STALE_AFTER).await? {
        roles.entry(row.cluster_id.clone()).or_default().push(row);
    }
    let mut views: BTreeMap<String, Vec<db::partitions::VoterView>> = BTreeMap::new();
    for row in db::partitions::voter_views(&mut conn, VIEW_FRESH).await? {
        views.entry(row.cluster_id.clone()).or_default().push(row);
    }
    let figures = Figures {
        health: db::nodes::health_counts(&mut conn, NODE_STALE_AFTER)
            .await?
            .iter()
            .map(|row| (row.cluster_id.clone(), health_pb(row)))
            .collect(),
        pending: db::join::pending_counts(&mut conn, JOIN_REQUEST_WAITING)
            .await?
            .into_iter()
            .map(|row| (row.cluster_id.clone(), row))
            .collect(),
        roles,
        certificates: db::nodes::certificate_counts(
            &mut conn,
            CERTIFICATES_SOON,
            CERT_RENEWAL_OVERDUE_PERCENT,
        )
        .await?
        .into_iter()
        .map(|row| (row.cluster_id.clone(), row))
        .collect(),
        views,
        voters: db::storage_nodes::voter_counts(&mut conn)
            .await?
            .into_iter()
            .collect(),
    };
    let rows = db::clusters::overviews(&mut conn).await?;
    drop(conn);

    let all: Vec<pb::ClusterOverview> = rows.into_iter().map(|row| figures.of(row)).collect();
    let mut nodes_total = pb::NodeHealthCounts::default();
    for cluster in &all {
        add(&mut nodes_total, &cluster.nodes.unwrap_or_default());
    }
    let clusters_total = count(all.len() as i64);
    let risks_total = count(all.iter().map(|c| c.risks.len() as i64).sum());
    let pending_total = count(all.iter().map(|c| i64::from(c.pending_join_requests)).sum());
    let mut clusters: Vec<pb::ClusterOverview> = all
        .into_iter()
        .filter(|c| page.after.is_empty() || c.cluster_id > page.after)
        .take(usize::try_from(page.limit()).unwrap_or(usize::MAX))
        .collect();
    let next_page_token = page.finish(&mut clusters, |c| c.cluster_id.clone());
    Ok(pb::Overview {
        clusters,
        next_page_token,
        clusters_total,
        nodes_total: Some(nodes_total),
        pending_join_requests_total: pending_total,
        risks_total,
        checked_at_unix_ms: now.0,
        stale_after_seconds: NODE_STALE_AFTER.as_secs(),
        certificates_soon_seconds: CERTIFICATES_SOON.as_secs(),
        join_request_waiting_seconds: JOIN_REQUEST_WAITING.as_secs(),
        view_fresh_seconds: VIEW_FRESH.as_secs(),
    })
}
