//! The console's pages. Each reads through the same service functions as
//! the admin API (which check authorization again) and renders one
//! answer; lists are paged ([`super::CONSOLE_ROWS_PER_PAGE`]) and sortable,
//! and every page links to the audit rows of what it shows.

use super::html::{self, Cell, Table, audit_link, badge, csrf_field, esc};
use super::session::Signed;
use super::{CONSOLE_ROWS_PER_PAGE, Console, Params, Reply};
use crate::error::{Error, Result};
use rap_proto::pb;
use rap_proto::time::UnixMillis;
use std::fmt::Write;

fn page_request(params: &Params) -> Option<pb::PageRequest> {
    Some(pb::PageRequest {
        page_size: CONSOLE_ROWS_PER_PAGE,
        page_token: params.get("page").cloned().unwrap_or_default(),
    })
}

fn param<'a>(params: &'a Params, name: &str) -> &'a str {
    params.get(name).map(String::as_str).unwrap_or_default()
}

/// "Next page" when the listing goes on.
fn pager(path: &str, params: &Params, next: &str) -> String {
    if next.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "page" && k.as_str() != "done")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    pairs.push(("page", next));
    format!(
        "<p class=\"pager\"><a href=\"{}{}\">Next page →</a></p>",
        esc(path),
        esc(&html::query(&pairs))
    )
}

/// The notice of a form that just succeeded (`?done=<action>`), linking
/// to its audit rows.
fn done_notice(signed: &Signed, params: &Params) -> String {
    let done = param(params, "done");
    if done.is_empty()
        || !done
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
    {
        return String::new();
    }
    format!(
        "<div class=\"notice\" id=\"done\">Done: <span class=\"mono\">{}</span> {} · {}</div>",
        esc(done),
        esc(param(params, "target")),
        audit_link(
            &[("actor", &signed.principal.id), ("action", done)],
            "its audit row"
        )
    )
}

fn now() -> i64 {
    UnixMillis::now().0
}

fn node_href(cluster: &str, node: &str) -> String {
    format!(
        "/node{}",
        html::query(&[("cluster", cluster), ("node", node)])
    )
}

/// `region / zone`, or `-` when neither is set.
fn location(region: &str, zone: &str) -> String {
    match (region, zone) {
        ("", "") => "-".into(),
        (region, zone) => format!("{region} / {zone}"),
    }
}

fn health_counts(counts: Option<&pb::NodeHealthCounts>) -> String {
    let Some(c) = counts else {
        return "-".into();
    };
    let mut out = String::new();
    for (n, state) in [
        (c.healthy, "healthy"),
        (c.degraded, "degraded"),
        (c.unhealthy, "unhealthy"),
        (c.stale, "stale"),
        (c.never_seen, "never seen"),
        (c.unknown, "unknown"),
    ] {
        if n > 0 {
            let _ = write!(out, "{} {} ", n, badge(state));
        }
    }
    if out.is_empty() { "none".into() } else { out }
}

/// Overview: per cluster the authority state, agents by health, pending
/// joins, role coverage and certificates ending; totals; the risks.
pub async fn overview(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    let o = crate::overview::overview(
        &c.ctx,
        &s.principal,
        &pb::GetOverviewRequest {
            page: page_request(params),
        },
    )
    .await?;
    let totals = o.nodes_total.unwrap_or_default();
    let mut body = done_notice(s, params);
    let _ = write!(
        body,
        "<div class=\"cards\">\
         <div class=\"card\"><div class=\"muted\">Clusters</div><div class=\"n\">{}</div></div>\
         <div class=\"card\"><div class=\"muted\">Active nodes</div><div class=\"n\">{}</div><div>{}</div></div>\
         <div class=\"card\"><div class=\"muted\">Pending join requests</div><div class=\"n\"><a href=\"/join-requests\">{}</a></div></div>\
         <div class=\"card\"><div class=\"muted\">Risks</div><div class=\"n\"><a href=\"/health\">{}</a></div></div></div>",
        o.clusters_total,
        totals.active,
        health_counts(Some(&totals)),
        o.pending_join_requests_total,
        o.risks_total
    );
    let now = now();
    let mut t = Table::new(&[
        "Cluster",
        "Authority",
        "Term",
        "Observed",
        "Agents",
        "Pending joins",
        "Roles uncovered",
        "Certs expired / expiring",
        "Risks",
    ]);
    for cl in &o.clusters {
        let uncovered: Vec<&str> = cl
            .roles
            .iter()
            .filter(|r| r.healthy_holders == 0)
            .map(|r| r.role.as_str())
            .collect();
        t.row(vec![
            Cell::link(&format!("/clusters#{}", cl.cluster_id), &cl.cluster_id),
            Cell::state(&cl.authority_state),
            Cell::num(cl.authority_term as i64),
            Cell::when(cl.authority_observed_at_unix_ms, now),
            Cell::html(health_counts(cl.nodes.as_ref()), ""),
            Cell::num(i64::from(cl.pending_join_requests)),
            Cell::text(&uncovered.join(", ")),
            Cell::text(&format!(
                "{} / {}",
                cl.certificates_expired, cl.certificates_expiring
            )),
            Cell::num(cl.risks.len() as i64),
        ]);
    }
    body.push_str(&t.render("/", params, "No cluster yet: rapctl cluster create <id>"));
    body.push_str(&pager("/", params, &o.next_page_token));
    body.push_str("<h2>Risks</h2>");
    body.push_str(&risks_table(&o, params));
    let _ = write!(
        body,
        "<p class=\"muted\">Checked {}. A heartbeat older than {} s is stale; views older than {} s \
         are not counted. {}</p>",
        html::time(o.checked_at_unix_ms),
        o.stale_after_seconds,
        o.view_fresh_seconds,
        audit_link(
            &[("actor", crate::watch::WATCHER_ACTOR)],
            "What the watcher announced"
        )
    );
    Ok(Reply::Page(body))
}

fn risks_table(o: &pb::Overview, params: &Params) -> String {
    let mut t = Table::new(&["Cluster", "Risk", "Detail"]);
    for cl in &o.clusters {
        for r in &cl.risks {
            t.row(vec![
                Cell::text(&r.cluster_id),
                Cell::html(
                    format!("<span class=\"state warn mono\">{}</span>", esc(&r.kind)),
                    &r.kind,
                ),
                Cell::text(&r.detail),
            ]);
        }
    }
    t.render("/", params, "No risk.")
}

/// Clusters: authority term and fences, storage nodes with their failure
/// domains, the authority state from the voters' recorded views.
pub async fn clusters(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    let (clusters, next) =
        crate::clusters::list(&c.ctx, &s.principal, page_request(params).as_ref()).await?;
    let o =
        crate::overview::overview(&c.ctx, &s.principal, &pb::GetOverviewRequest::default()).await?;
    let state = |id: &str| {
        o.clusters
            .iter()
            .find(|cl| cl.cluster_id == id)
            .map(|cl| cl.authority_state.clone())
            .unwrap_or_default()
    };
    let now = now();
    let mut t = Table::new(&[
        "Cluster",
        "Name",
        "Authority",
        "Term",
        "Last fence",
        "Storage nodes",
        "Active nodes",
        "Created",
    ]);
    for cl in &clusters {
        t.row(vec![
            Cell::mono(&cl.cluster_id),
            Cell::text(&cl.name),
            Cell::state(&state(&cl.cluster_id)),
            Cell::num(cl.authority_term as i64),
            Cell::num(cl.last_fence_seq as i64),
            Cell::num(cl.storage_nodes.len() as i64),
            Cell::num(i64::from(cl.active_nodes)),
            Cell::when(cl.created_at_unix_ms, now),
        ]);
    }
    let mut body = t.render("/clusters", params, "No cluster yet.");
    body.push_str(&pager("/clusters", params, &next));
    for cl in &clusters {
        let _ = write!(
            body,
            "<h2 id=\"{id}\">Storage nodes of {id}</h2>",
            id = esc(&cl.cluster_id)
        );
        let mut t = Table::new(&["Storage node", "Address", "Region", "Zone", "Host"]);
        for sn in &cl.storage_nodes {
            let d = sn.domain.clone().unwrap_or_default();
            t.row(vec![
                Cell::mono(&sn.node_id),
                Cell::mono(&sn.address),
                Cell::text(&d.region),
                Cell::text(&d.zone),
                Cell::text(&d.host),
            ]);
        }
        body.push_str(&t.render(
            "/clusters",
            params,
            "Not bootstrapped: rapctl cluster bootstrap",
        ));
        let _ = write!(
            body,
            "<p>{} · {}</p>",
            audit_link(
                &[("cluster", &cl.cluster_id), ("action", "authority.")],
                "authority audit"
            ),
            audit_link(
                &[("cluster", &cl.cluster_id), ("action", "partition.")],
                "partitions"
            )
        );
    }
    Ok(Reply::Page(body))
}

/// Nodes: every cluster's nodes with health, heartbeat, roles, location.
pub async fn nodes(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    let (nodes, next) = crate::nodes::list(
        &c.ctx,
        &s.principal,
        &pb::ListNodesRequest {
            cluster_id: param(params, "cluster").to_string(),
            page: page_request(params),
        },
    )
    .await?;
    let now = now();
    let mut t = Table::new(&[
        "Node",
        "Cluster",
        "Health",
        "Last heartbeat",
        "Membership",
        "Roles",
        "Region / zone",
        "Certificate ends",
    ]);
    for n in &nodes {
        t.row(vec![
            Cell::link(&node_href(&n.cluster_id, &n.node_id), &n.node_id),
            Cell::mono(&n.cluster_id),
            Cell::state(&n.health),
            Cell::when(n.last_heartbeat_unix_ms, now),
            Cell::state(&n.membership_status),
            Cell::text(&n.roles.join(", ")),
            Cell::text(&location(&n.region, &n.zone)),
            Cell::when(n.certificate_not_after_unix_ms, now),
        ]);
    }
    let mut body = t.render("/nodes", params, "No node has joined yet.");
    body.push_str(&pager("/nodes", params, &next));
    body.push_str(&format!(
        "<p>{}</p>",
        audit_link(&[("action", "node.")], "Node events in the audit trail")
    ));
    Ok(Reply::Page(body))
}

/// Join requests: pending ones with their facts, capabilities and
/// requested roles, approve and reject.
pub async fn join_requests(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    let status = match param(params, "status") {
        "" | "pending" => pb::JoinRequestStatus::Pending,
        "approved" => pb::JoinRequestStatus::Approved,
        "rejected" => pb::JoinRequestStatus::Rejected,
        "expired" => pb::JoinRequestStatus::Expired,
        "all" => pb::JoinRequestStatus::Unspecified,
        other => {
            return Err(Error::invalid(format!(
                "status {other:?}: pending, approved, rejected, expired or all"
            )));
        }
    };
    let (requests, next) = crate::enrollment::list(
        &c.ctx,
        &s.principal,
        &pb::ListJoinRequestsRequest {
            cluster_id: param(params, "cluster").to_string(),
            status: status as i32,
            page: page_request(params),
        },
    )
    .await?;
    let mut body = done_notice(s, params);
    body.push_str("<p>Show: ");
    for st in ["pending", "approved", "rejected", "expired", "all"] {
        let _ = write!(body, "<a href=\"/join-requests?status={st}\">{st}</a> ");
    }
    body.push_str("</p>");
    let now = now();
    let mut t = Table::new(&[
        "Request",
        "Cluster",
        "Kind",
        "Host facts",
        "Capabilities",
        "Requested roles",
        "Key",
        "Asked",
        "Status",
        "Review",
    ]);
    for r in &requests {
        let facts = r.facts.clone().unwrap_or_default();
        let domain = facts.domain.clone().unwrap_or_default();
        let caps: Vec<&str> = r.capabilities.iter().map(|c| c.name.as_str()).collect();
        let status = crate::enrollment::status_filter(r.status).unwrap_or("unknown");
        let revoked_before = r.key_history.iter().any(|k| k.status == "revoked");
        let review = if status == "pending" {
            let suggested = if r.requested_node_id.is_empty() {
                facts.hostname.clone()
            } else {
                r.requested_node_id.clone()
            };
            format!(
                "<form class=\"inline\" method=\"post\" action=\"/join-requests/approve\">{csrf}\
                 <input type=\"hidden\" name=\"id\" value=\"{id}\">\
                 <input type=\"hidden\" name=\"back\" value=\"/join-requests\">\
                 <input name=\"node_id\" value=\"{node}\" size=\"12\" aria-label=\"node id\">\
                 <button type=\"submit\" id=\"approve-{id}\">Approve</button></form> \
                 <form class=\"inline\" method=\"post\" action=\"/join-requests/reject\">{csrf}\
                 <input type=\"hidden\" name=\"id\" value=\"{id}\">\
                 <input type=\"hidden\" name=\"back\" value=\"/join-requests\">\
                 <input name=\"reason\" placeholder=\"reason\" size=\"10\" aria-label=\"reason\">\
                 <button class=\"danger\" type=\"submit\">Reject</button></form>",
                csrf = csrf_field(&s.csrf),
                id = esc(&r.join_request_id),
                node = esc(&suggested),
            )
        } else {
            esc(&format!("{} {}", r.reviewer, r.node_id))
        };
        t.row(vec![
            Cell::mono(&r.join_request_id),
            Cell::mono(&r.cluster_id),
            Cell::text(
                pb::NodeKind::try_from(r.kind)
                    .map(|k| k.as_str_name())
                    .unwrap_or("?")
                    .trim_start_matches("NODE_KIND_"),
            ),
            Cell::text(&format!(
                "{} · {} {} · agent {} · {}/{}/{}",
                facts.hostname,
                facts.os,
                facts.arch,
                facts.agent_version,
                domain.region,
                domain.zone,
                domain.host
            )),
            Cell::text(&caps.join(", ")),
            Cell::text(&r.requested_roles.join(", ")),
            Cell::html(
                format!(
                    "<span class=\"mono\">{}</span>{}",
                    esc(&r.fingerprint.chars().take(16).collect::<String>()),
                    if revoked_before {
                        " <span class=\"state bad\">revoked before</span>"
                    } else {
                        ""
                    }
                ),
                &r.fingerprint,
            ),
            Cell::when(r.created_at_unix_ms, now),
            Cell::state(status),
            Cell::html(review, status),
        ]);
    }
    body.push_str(&t.render("/join-requests", params, "No join request in this state."));
    body.push_str(&pager("/join-requests", params, &next));
    body.push_str(&format!(
        "<p>{}</p>",
        audit_link(
            &[("action", "join-request.")],
            "Join request reviews in the audit trail"
        )
    ));
    Ok(Reply::Page(body))
}

/// Node detail: membership, capabilities, roles, services desired vs
/// reported, heartbeat health, certificate, and its audit timeline.
pub async fn node(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    let (cluster, node_id) = (param(params, "cluster"), param(params, "node"));
    let n = crate::nodes::get(
        &c.ctx,
        &s.principal,
        &pb::GetNodeRequest {
            cluster_id: cluster.to_string(),
            node_id: node_id.to_string(),
        },
    )
    .await?;
    let now = now();
    let mut body = done_notice(s, params);
    let _ = write!(
        body,
        "<dl class=\"facts\">\
         <dt>Node</dt><dd class=\"mono\">{}</dd><dt>Cluster</dt><dd class=\"mono\">{}</dd>\
         <dt>Health</dt><dd>{}</dd><dt>Last heartbeat</dt><dd>{}</dd>\
         <dt>Membership</dt><dd>{}</dd><dt>Group</dt><dd>{}</dd>\
         <dt>Location</dt><dd>{}</dd>\
         <dt>Identity</dt><dd>{}</dd><dt>Certificate serial</dt><dd class=\"mono\">{}</dd>\
         <dt>Certificate ends</dt><dd>{} ({})</dd></dl>",
        esc(&n.node_id),
        esc(&n.cluster_id),
        badge(&n.health),
        esc(&html::ago(n.last_heartbeat_unix_ms, now)),
        badge(&n.membership_status),
        esc(&n.group_id),
        esc(&location(&n.region, &n.zone)),
        badge(&n.identity_status),
        esc(&n.certificate_serial),
        html::time(n.certificate_not_after_unix_ms),
        esc(&html::ago(n.certificate_not_after_unix_ms, now)),
    );
    body.push_str("<h2>Capabilities (reported, never permissions)</h2>");
    let mut t = Table::new(&["Capability", "Detail"]);
    for cap in &n.capabilities {
        t.row(vec![Cell::mono(&cap.name), Cell::text(&cap.detail)]);
    }
    body.push_str(&t.render("/node", params, "None reported."));
    body.push_str("<h2>Roles</h2>");
    let roles = crate::roles::list(
        &c.ctx,
        &s.principal,
        &pb::ListRolesRequest {
            cluster_id: n.cluster_id.clone(),
            node_id: n.node_id.clone(),
            page: page_request(&Params::new()),
        },
    )
    .await?;
    body.push_str(&roles_table(s, &roles.assignments, "/node", params));
    body.push_str("<h2>Services: desired vs reported</h2>");
    let services = crate::workloads::list(
        &c.ctx,
        &s.principal,
        &pb::ListServicesRequest {
            cluster_id: n.cluster_id.clone(),
            node_id: n.node_id.clone(),
            page: page_request(&Params::new()),
        },
    )
    .await?;
    body.push_str(&services_table(&services.services, "/node", params));
    body.push_str("<h2>Audit timeline</h2>");
    let events = crate::audit::list(
        &c.ctx.pool,
        &s.principal,
        &pb::ListAuditEventsRequest {
            cluster_id: n.cluster_id.clone(),
            target: n.node_id.clone(),
            page: Some(pb::PageRequest {
                page_size: 20,
                page_token: String::new(),
            }),
            ..Default::default()
        },
    )
    .await?;
    body.push_str(&audit_table(&events.events, "/node", params));
    body.push_str(&format!(
        "<p>{}</p>",
        audit_link(
            &[("cluster", &n.cluster_id), ("target", &n.node_id)],
            "All of this node's audit rows"
        )
    ));
    Ok(Reply::Page(body))
}

fn roles_table(s: &Signed, rows: &[pb::RoleAssignment], path: &str, params: &Params) -> String {
    let mut t = Table::new(&[
        "Cluster",
        "Node",
        "Role",
        "Org",
        "Status",
        "Assigned by",
        "",
    ]);
    for r in rows {
        let remove = format!(
            "<form class=\"inline\" method=\"post\" action=\"/roles/remove\">{}\
             <input type=\"hidden\" name=\"cluster\" value=\"{}\">\
             <input type=\"hidden\" name=\"node\" value=\"{}\">\
             <input type=\"hidden\" name=\"role\" value=\"{}\">\
             <input type=\"hidden\" name=\"org\" value=\"{}\">\
             <input type=\"hidden\" name=\"back\" value=\"/roles\">\
             <button class=\"secondary\" type=\"submit\">Remove</button></form>",
            csrf_field(&s.csrf),
            esc(&r.cluster_id),
            esc(&r.node_id),
            esc(&r.role),
            esc(&r.org_id)
        );
        t.row(vec![
            Cell::mono(&r.cluster_id),
            Cell::link(&node_href(&r.cluster_id, &r.node_id), &r.node_id),
            Cell::mono(&r.role),
            Cell::text(&r.org_id),
            Cell::state(&r.status),
            Cell::text(&r.assigned_by),
            Cell::html(remove, ""),
        ]);
    }
    t.render(path, params, "No role assigned.")
}

fn services_table(rows: &[pb::ServiceInstance], path: &str, params: &Params) -> String {
    let mut t = Table::new(&[
        "Cluster", "Node", "Service", "Desired", "Reported", "In sync", "Version",
    ]);
    for r in rows {
        let sync = match (r.desired_state.as_str(), r.reported_state.as_str()) {
            (_, "") => "unknown",
            (d, rep) if d == rep => "yes",
            ("enabled", "running") | ("disabled", "stopped") => "yes",
            _ => "degraded",
        };
        t.row(vec![
            Cell::mono(&r.cluster_id),
            Cell::link(&node_href(&r.cluster_id, &r.node_id), &r.node_id),
            Cell::mono(&r.service),
            Cell::state(&r.desired_state),
            Cell::state(&r.reported_state),
            Cell::state(sync),
            Cell::num(r.version as i64),
        ]);
    }
    t.render(path, params, "No service desired or reported.")
}

fn audit_table(rows: &[pb::AuditEvent], path: &str, params: &Params) -> String {
    let now = now();
    let mut t = Table::new(&[
        "#",
        "When",
        "Cluster",
        "Actor",
        "Action",
        "Target",
        "Result",
        "Reason / details",
    ]);
    for e in rows.iter().rev() {
        let details = if e.details_json.is_empty() || e.details_json == "{}" {
            e.reason.clone()
        } else {
            format!("{} {}", e.reason, e.details_json)
        };
        t.row(vec![
            Cell::num(e.event_id as i64),
            Cell::when(e.at_unix_ms, now),
            Cell::mono(&e.cluster_id),
            Cell::mono(&e.actor),
            Cell::mono(&e.action),
            Cell::mono(&e.target),
            Cell::state(&e.result),
            Cell::text(&details),
        ]);
    }
    t.render(path, params, "No audit row.")
}

/// Role assignments, with assign and remove.
pub async fn roles(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    let roles = crate::roles::list(
        &c.ctx,
        &s.principal,
        &pb::ListRolesRequest {
            cluster_id: param(params, "cluster").to_string(),
            node_id: param(params, "node").to_string(),
            page: page_request(params),
        },
    )
    .await?;
    let mut body = done_notice(s, params);
    let _ = write!(
        body,
        "<form class=\"inline\" method=\"post\" action=\"/roles/assign\" id=\"assign\">{}\
         <input type=\"hidden\" name=\"back\" value=\"/roles\">\
         <input name=\"cluster\" placeholder=\"cluster\" size=\"8\" aria-label=\"cluster\" required>\
         <input name=\"node\" placeholder=\"node\" size=\"12\" aria-label=\"node\" required>\
         <input name=\"role\" placeholder=\"role\" size=\"14\" aria-label=\"role\" required>\
         <input name=\"org\" placeholder=\"org (optional)\" size=\"10\" aria-label=\"org\">\
         <button type=\"submit\">Assign role</button></form>\
         <p class=\"muted\">Known roles: {}. A role needs the capability it rests on, \
         reported by the node.</p>",
        csrf_field(&s.csrf),
        esc(&crate::roles::known_roles())
    );
    body.push_str(&roles_table(s, &roles.assignments, "/roles", params));
    body.push_str(&pager("/roles", params, &roles.next_page_token));
    body.push_str(&format!(
        "<p>{}</p>",
        audit_link(&[("action", "role.")], "Role changes in the audit trail")
    ));
    Ok(Reply::Page(body))
}

/// Service workloads: desired vs reported per node, for one cluster.
pub async fn services(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    let (clusters, _) = crate::clusters::list(&c.ctx, &s.principal, None).await?;
    let cluster = match param(params, "cluster") {
        "" => clusters
            .first()
            .map(|c| c.cluster_id.clone())
            .unwrap_or_default(),
        named => named.to_string(),
    };
    let mut body = String::from("<p>Cluster: ");
    for cl in &clusters {
        let _ = write!(
            body,
            "<a href=\"/services{}\">{}</a> ",
            esc(&html::query(&[("cluster", &cl.cluster_id)])),
            esc(&cl.cluster_id)
        );
    }
    body.push_str("</p>");
    if cluster.is_empty() {
        body.push_str("<p class=\"muted\">No cluster yet.</p>");
        return Ok(Reply::Page(body));
    }
    let services = crate::workloads::list(
        &c.ctx,
        &s.principal,
        &pb::ListServicesRequest {
            cluster_id: cluster.clone(),
            node_id: param(params, "node").to_string(),
            page: page_request(params),
        },
    )
    .await?;
    let _ = write!(body, "<h2>{}</h2>", esc(&cluster));
    body.push_str(&services_table(&services.services, "/services", params));
    body.push_str(&pager("/services", params, &services.next_page_token));
    body.push_str(&format!(
        "<p>{}</p>",
        audit_link(
            &[("cluster", &cluster), ("action", "service.")],
            "Service changes in the audit trail"
        )
    ));
    Ok(Reply::Page(body))
}

/// Health and alerts: the risks, agents that are not healthy, and what
/// the watcher announced lately.
pub async fn health(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    let o =
        crate::overview::overview(&c.ctx, &s.principal, &pb::GetOverviewRequest::default()).await?;
    let mut body = String::from("<h2>Risks</h2>");
    body.push_str(&risks_table(&o, params));
    body.push_str("<h2>Authority groups</h2>");
    let now = now();
    let mut t = Table::new(&["Cluster", "Authority", "Term", "Observed"]);
    for cl in &o.clusters {
        t.row(vec![
            Cell::mono(&cl.cluster_id),
            Cell::state(&cl.authority_state),
            Cell::num(cl.authority_term as i64),
            Cell::when(cl.authority_observed_at_unix_ms, now),
        ]);
    }
    body.push_str(&t.render("/health", params, "No cluster yet."));
    body.push_str("<h2>Nodes that need a look</h2>");
    let (nodes, _) = crate::nodes::list(
        &c.ctx,
        &s.principal,
        &pb::ListNodesRequest {
            cluster_id: String::new(),
            page: Some(pb::PageRequest {
                page_size: crate::limits::PAGE_SIZE_MAX,
                page_token: String::new(),
            }),
        },
    )
    .await?;
    let mut t = Table::new(&["Node", "Cluster", "Health", "Last heartbeat"]);
    for n in nodes.iter().filter(|n| n.health != "healthy") {
        t.row(vec![
            Cell::link(&node_href(&n.cluster_id, &n.node_id), &n.node_id),
            Cell::mono(&n.cluster_id),
            Cell::state(&n.health),
            Cell::when(n.last_heartbeat_unix_ms, now),
        ]);
    }
    body.push_str(&t.render("/health", params, "Every node is healthy."));
    body.push_str("<h2>Announced lately</h2>");
    let events = crate::audit::list(
        &c.ctx.pool,
        &s.principal,
        &pb::ListAuditEventsRequest {
            actor: crate::watch::WATCHER_ACTOR.to_string(),
            page: Some(pb::PageRequest {
                page_size: 30,
                page_token: String::new(),
            }),
            ..Default::default()
        },
    )
    .await?;
    body.push_str(&audit_table(&events.events, "/health", params));
    body.push_str(&format!(
        "<p>{}</p>",
        audit_link(
            &[("actor", crate::watch::WATCHER_ACTOR)],
            "Everything the watcher announced"
        )
    ));
    Ok(Reply::Page(body))
}

/// Audit: filtered by cluster, actor, action (a prefix ending in a dot),
/// target and result; newest first, paged back.
pub async fn audit(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    let filters = ["cluster", "actor", "action", "target", "result"];
    let response = crate::audit::list(
        &c.ctx.pool,
        &s.principal,
        &pb::ListAuditEventsRequest {
            cluster_id: param(params, "cluster").to_string(),
            actor: param(params, "actor").to_string(),
            action: param(params, "action").to_string(),
            target: param(params, "target").to_string(),
            result: param(params, "result").to_string(),
            page: page_request(params),
            ..Default::default()
        },
    )
    .await?;
    let mut body = String::from("<form class=\"inline\" method=\"get\" action=\"/audit\">");
    for f in filters {
        let _ = write!(
            body,
            "<input name=\"{f}\" placeholder=\"{f}\" value=\"{}\" size=\"12\" aria-label=\"{f}\">",
            esc(param(params, f))
        );
    }
    body.push_str("<button type=\"submit\">Filter</button> <a href=\"/audit\">clear</a></form>");
    body.push_str("<p class=\"muted\">An action ending in a dot is a prefix (<span class=\"mono\">join-request.</span>).</p>");
    body.push_str(&audit_table(&response.events, "/audit", params));
    body.push_str(
        &pager("/audit", params, &response.next_page_token).replace("Next page →", "Older →"),
    );
    Ok(Reply::Page(body))
}

/// Trust and certificates: CA fingerprints, signing key ids and trust
/// root generations, revocations, certificates expiring soon.
pub async fn trust(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    let (clusters, _) = crate::clusters::list(&c.ctx, &s.principal, None).await?;
    let mut body = String::from("<h2>Cluster trust</h2>");
    let mut t = Table::new(&[
        "Cluster",
        "CA fingerprint",
        "Signing key",
        "Trust root generations",
    ]);
    let mut revoked = Table::new(&["Cluster", "Node", "Certificate serial", "Revoked"]);
    let now = now();
    {
        let mut conn = c.ctx.pool.acquire().await?;
        for cl in &clusters {
            let mut generations = Vec::new();
            let cluster_id = rap_proto::ids::ClusterId::new(cl.cluster_id.as_str())?;
            let genesis = crate::db::clusters::trust_root(&mut conn, &cl.cluster_id).await?;
            let mut roots = vec![genesis];
            roots.extend(
                crate::db::clusters::rotated_roots(&mut conn, &cl.cluster_id)
                    .await?
                    .into_iter()
                    .map(|r| r.root),
            );
            for root in roots {
                match rap_proto::envelope::VerifiedTrustRoot::reload(&root, &cluster_id) {
                    Ok(v) => generations.push(format!(
                        "gen {}: {}",
                        v.generation().0,
                        v.key_ids()
                            .map(|k| k.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                    Err(e) => generations.push(format!("unreadable: {e}")),
                }
            }
            t.row(vec![
                Cell::mono(&cl.cluster_id),
                Cell::mono(&cl.ca_fingerprint),
                Cell::mono(&cl.signing_key_id),
                Cell::html(
                    generations
                        .iter()
                        .map(|g| format!("<div class=\"mono\">{}</div>", esc(g)))
                        .collect(),
                    "",
                ),
            ]);
            for r in crate::db::nodes::revoked_certificates(
                &mut conn,
                &cl.cluster_id,
                i64::from(CONSOLE_ROWS_PER_PAGE),
            )
            .await?
            {
                revoked.row(vec![
                    Cell::mono(&cl.cluster_id),
                    Cell::mono(&r.node_id),
                    Cell::mono(&r.certificate_serial),
                    Cell::when(r.revoked_at_unix_ms, now),
                ]);
            }
        }
    }
    body.push_str(&t.render("/trust", params, "No cluster yet."));
    body.push_str("<h2>Revoked certificates</h2>");
    body.push_str(&revoked.render("/trust", params, "None revoked."));
    body.push_str("<h2>Certificates expiring within 30 days</h2>");
    let expiring = crate::certificates::expiring(
        &c.ctx,
        &s.principal,
        &pb::ListExpiringCertificatesRequest {
            cluster_id: String::new(),
            within_seconds: 0,
            page: page_request(params),
        },
    )
    .await?;
    let mut t = Table::new(&[
        "Cluster",
        "Kind",
        "Subject",
        "Serial",
        "Ends",
        "State",
        "Renews itself",
    ]);
    for e in &expiring.certificates {
        t.row(vec![
            Cell::mono(&e.cluster_id),
            Cell::text(&e.kind),
            Cell::mono(&e.subject),
            Cell::mono(&e.serial),
            Cell::when(e.not_after_unix_ms, now),
            Cell::state(if e.error.is_empty() {
                &e.state
            } else {
                "unreadable"
            }),
            Cell::state(if e.renewed_automatically { "yes" } else { "no" }),
        ]);
    }
    body.push_str(&t.render("/trust", params, "Nothing expires within 30 days."));
    body.push_str(&pager("/trust", params, &expiring.next_page_token));
    body.push_str(&format!(
        "<p>{} · {}</p>",
        audit_link(&[("action", "cluster.rotate-signing-key")], "Key rotations"),
        audit_link(&[("action", "node.revoke")], "Revocations")
    ));
    Ok(Reply::Page(body))
}

/// The organization-safe view: an org admin's own organization (a
/// platform principal names one with `?org=`): its endpoints and
/// services and their status, nothing of the core.
pub async fn org(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    let requested = param(params, "org");
    if requested.is_empty() && super::Access::Platform.admits(&s.principal) {
        let orgs = crate::orgs::list_orgs(
            &c.ctx,
            &s.principal,
            &pb::ListOrganizationsRequest {
                page: page_request(params),
            },
        )
        .await?
        .organizations;
        let mut body = String::from("<p>Pick an organization to see what its admins see:</p><ul>");
        for o in &orgs {
            let _ = write!(
                body,
                "<li><a href=\"/org{}\">{}</a> {}</li>",
                esc(&html::query(&[("org", &o.org_id)])),
                esc(&o.org_id),
                esc(&o.name)
            );
        }
        body.push_str("</ul>");
        return Ok(Reply::Page(body));
    }
    let view = crate::orgs::org_view(
        &c.ctx,
        &s.principal,
        &pb::GetOrgViewRequest {
            org_id: requested.to_string(),
        },
    )
    .await?;
    let mut body = format!(
        "<p>Organization <strong>{}</strong> ({}).</p><h2>Endpoints</h2>",
        esc(&view.name),
        esc(&view.org_id)
    );
    let mut t = Table::new(&["Endpoint", "Kind", "Cluster", "Status"]);
    for e in &view.endpoints {
        t.row(vec![
            Cell::text(&e.name),
            Cell::text(&e.kind),
            Cell::mono(&e.cluster_id),
            Cell::state(&e.status),
        ]);
    }
    body.push_str(&t.render("/org", params, "No endpoint yet."));
    body.push_str("<h2>Services</h2>");
    let mut t = Table::new(&["Service", "Status"]);
    for sv in &view.services {
        t.row(vec![Cell::mono(&sv.service), Cell::state(&sv.status)]);
    }
    body.push_str(&t.render("/org", params, "No service yet."));
    Ok(Reply::Page(body))
}

/// The principal's own account: kind, TOTP enrolment (with its QR code)
/// and step-up.
pub async fn account(_c: &Console, s: &Signed, _params: &Params) -> Result<Reply> {
    let p = &s.principal;
    let mut body = format!(
        "<dl class=\"facts\"><dt>Principal</dt><dd class=\"mono\">{}</dd><dt>Kind</dt><dd>{}</dd>\
         <dt>Signed in with token</dt><dd class=\"mono\">{}</dd><dt>TOTP</dt><dd>{}</dd>\
         <dt>Step-up</dt><dd>{}</dd></dl>",
        esc(&p.id),
        esc(p.kind.name()),
        esc(&p.token_id),
        badge(if p.totp_enrolled { "enabled" } else { "none" }),
        badge(if p.stepped_up { "active" } else { "none" }),
    );
    if p.totp_enrolled {
        body.push_str(&super::actions::step_up_form(&s.csrf, "/account"));
    }
    let _ = write!(
        body,
        "<h2>Authenticator (TOTP)</h2><p>{}</p>\
         <form method=\"post\" action=\"/account/totp/enroll\">{}\
         <input type=\"hidden\" name=\"back\" value=\"/account\">\
         <button type=\"submit\" id=\"enroll\">{}</button></form>",
        if p.totp_enrolled {
            "Enrolling again needs a step-up; the old secret stays in force until the new one is confirmed."
        } else {
            "With TOTP, high-risk actions (approving joins, assigning roles, revoking nodes, promotions, key rotation, principals) ask for a fresh code."
        },
        csrf_field(&s.csrf),
        if p.totp_enrolled {
            "Enrol a new authenticator"
        } else {
            "Enrol an authenticator"
        }
    );
    body.push_str(&format!(
        "<p>{}</p>",
        audit_link(&[("actor", &p.id)], "Your audit rows")
    ));
    Ok(Reply::Page(body))
}
