//! `rapctl join-request ...`: the review of join requests (list, show,
//! approve, reject, wait), and how capabilities and key histories are
//! printed (also by `rapctl node`).

use crate::client::{self, Conn, Session, all_pages, page};
use crate::cluster::{domain_json, domain_text};
use crate::output::Format;
use crate::table::{Table, or_dash, print_list, print_object, time};
use anyhow::Result;
use rap_proto::pb;
use serde_json::{Value, json};

/// `rapctl join-request ...`.
#[derive(clap::Args, Debug)]
pub struct JoinRequestArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: JoinRequestCommand,
}

/// Which join requests to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StatusFilter {
    /// Waiting for review.
    Pending,
    /// Approved: the node has an identity.
    Approved,
    /// Rejected by an operator.
    Rejected,
    /// Not reviewed in time.
    Expired,
    /// Every status.
    All,
}

impl StatusFilter {
    /// The wire value; `all` is UNSPECIFIED.
    fn wire(self) -> pb::JoinRequestStatus {
        match self {
            StatusFilter::Pending => pb::JoinRequestStatus::Pending,
            StatusFilter::Approved => pb::JoinRequestStatus::Approved,
            StatusFilter::Rejected => pb::JoinRequestStatus::Rejected,
            StatusFilter::Expired => pb::JoinRequestStatus::Expired,
            StatusFilter::All => pb::JoinRequestStatus::Unspecified,
        }
    }
}

/// Join request commands.
#[derive(clap::Subcommand, Debug)]
enum JoinRequestCommand {
    /// List join requests (pending ones by default).
    List {
        /// Only this cluster's requests.
        #[arg(long)]
        cluster: Option<String>,
        /// Which requests to list.
        #[arg(long, value_enum, default_value = "pending")]
        status: StatusFilter,
    },
    /// Show one join request: facts, capabilities, requested roles.
    Show {
        /// The join request id.
        join_request_id: String,
    },
    /// Approve a join request: the node gets an identity and membership.
    Approve {
        /// The join request id.
        join_request_id: String,
        /// The node id to give the node (default: derived from its key
        /// fingerprint).
        #[arg(long)]
        node_id: Option<String>,
    },
    /// Reject a join request.
    Reject {
        /// The join request id.
        join_request_id: String,
        /// Why (recorded in the audit log and shown to the node).
        #[arg(long, required = true)]
        reason: String,
    },
    /// Let a key whose certificate was revoked submit one more join request
    /// to a cluster (platform owner only; audited). Prints the key's history.
    AllowRevokedKey {
        /// The cluster it may join.
        #[arg(long)]
        cluster: String,
        /// The key's fingerprint (as `join-request show` prints it).
        #[arg(long)]
        fingerprint: String,
        /// Why (recorded in the audit log).
        #[arg(long, required = true)]
        reason: String,
    },
}

/// A join request status as a lower-case word.
fn status_name(status: i32) -> String {
    match pb::JoinRequestStatus::try_from(status) {
        Ok(pb::JoinRequestStatus::Pending) => "pending".to_string(),
        Ok(pb::JoinRequestStatus::Approved) => "approved".to_string(),
        Ok(pb::JoinRequestStatus::Rejected) => "rejected".to_string(),
        Ok(pb::JoinRequestStatus::Expired) => "expired".to_string(),
        Ok(pb::JoinRequestStatus::Unspecified) => "unspecified".to_string(),
        Err(_) => format!("unknown({status})"),
    }
}

/// Capabilities as `name(detail), ...`.
pub fn capabilities_text(capabilities: &[pb::Capability]) -> String {
    let parts: Vec<String> = capabilities
        .iter()
        .map(|c| {
            if c.detail.is_empty() {
                c.name.clone()
            } else {
                format!("{}({})", c.name, c.detail)
            }
        })
        .collect();
    or_dash(&parts.join(", "))
}

/// Capabilities as JSON.
pub fn capabilities_json(capabilities: &[pb::Capability]) -> Value {
    capabilities
        .iter()
        .map(|c| json!({"name": c.name, "detail": c.detail}))
        .collect()
}

fn join_request_json(r: &pb::JoinRequest) -> Value {
    let facts = r.facts.as_ref().map(|f| {
        let labels: serde_json::Map<String, Value> = f
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({
            "hostname": f.hostname,
            "os": f.os,
            "arch": f.arch,
            "agent_version": f.agent_version,
            "domain": domain_json(f.domain.as_ref()),
            "labels": labels,
        })
    });
    json!({
        "join_request_id": r.join_request_id,
        "cluster_id": r.cluster_id,
        "token_id": r.token_id,
        "fingerprint": r.fingerprint,
        "status": status_name(r.status),
        "facts": facts,
        "capabilities": capabilities_json(&r.capabilities),
        "requested_roles": r.requested_roles,
        "reviewer": r.reviewer,
        "reason": r.reason,
        "node_id": r.node_id,
        "created_at_unix_ms": r.created_at_unix_ms,
        "kind": kind_name(r.kind),
        "requested_node_id": r.requested_node_id,
        "server_names": r.server_names,
        "key_history": r.key_history.iter().map(key_history_json).collect::<Vec<_>>(),
    })
}

/// A node kind's name.
fn kind_name(kind: i32) -> &'static str {
    match pb::NodeKind::try_from(kind).unwrap_or(pb::NodeKind::Unspecified) {
        pb::NodeKind::Storage => "storage",
        pb::NodeKind::Agent | pb::NodeKind::Unspecified => "agent",
    }
}

fn key_history_json(entry: &pb::KeyHistoryEntry) -> Value {
    json!({
        "cluster_id": entry.cluster_id,
        "node_id": entry.node_id,
        "kind": kind_name(entry.kind),
        "status": entry.status,
        "issued_at_unix_ms": entry.issued_at_unix_ms,
        "revoked_at_unix_ms": entry.revoked_at_unix_ms,
    })
}

/// One line per earlier identity of a key, revoked ones marked.
fn key_history_text(history: &[pb::KeyHistoryEntry]) -> String {
    if history.is_empty() {
        return "-".to_string();
    }
    history
        .iter()
        .map(|entry| {
            let mark = if entry.status == "revoked" {
                format!(" REVOKED {}", time(entry.revoked_at_unix_ms))
            } else {
                String::new()
            };
            format!(
                "{}/{} ({}, {}){mark}",
                entry.cluster_id,
                entry.node_id,
                kind_name(entry.kind),
                entry.status
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn print_join_request(format: Format, r: &pb::JoinRequest) {
    let facts = r.facts.clone().unwrap_or_default();
    let mut labels: Vec<String> = facts
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.sort();
    let rows = [
        ("join request", r.join_request_id.clone()),
        ("cluster", r.cluster_id.clone()),
        ("kind", kind_name(r.kind).to_string()),
        ("status", status_name(r.status)),
        ("node id", or_dash(&r.node_id)),
        ("requested node id", or_dash(&r.requested_node_id)),
        ("server names", or_dash(&r.server_names.join(", "))),
        ("key history", key_history_text(&r.key_history)),
        ("key fingerprint", or_dash(&r.fingerprint)),
        ("token id", or_dash(&r.token_id)),
        ("hostname", or_dash(&facts.hostname)),
        (
            "os/arch",
            format!("{}/{}", or_dash(&facts.os), or_dash(&facts.arch)),
        ),
        ("agent version", or_dash(&facts.agent_version)),
        ("region/zone/host", domain_text(facts.domain.as_ref())),
        ("labels", or_dash(&labels.join(", "))),
        ("capabilities", capabilities_text(&r.capabilities)),
        ("requested roles", or_dash(&r.requested_roles.join(", "))),
        ("reviewer", or_dash(&r.reviewer)),
        ("reason", or_dash(&r.reason)),
        ("created", time(r.created_at_unix_ms)),
    ];
    print_object(format, &rows, &join_request_json(r));
}

/// The first `n` characters of a fingerprint, for tables.
fn short(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        or_dash(text)
    } else {
        let mut out: String = text.chars().take(n).collect();
        out.push('…');
        out
    }
}

/// Reviews (approves or rejects) one join request.
async fn review(
    s: &Session,
    approve: bool,
    request: pb::ReviewJoinRequestRequest,
) -> Result<pb::JoinRequest> {
    let mut client = s.client.clone();
    let response = if approve {
        client.approve_join_request(request).await
    } else {
        client.reject_join_request(request).await
    };
    Ok(response.map_err(|e| s.fail(e))?.into_inner())
}

/// Runs `rapctl join-request ...`.
pub async fn run_join_request(args: JoinRequestArgs, format: Format) -> Result<()> {
    let s = client::connect(&args.conn, "join-request").await?;
    match args.command {
        JoinRequestCommand::List { cluster, status } => {
            let cluster_id = cluster.unwrap_or_default();
            let requests = all_pages(async |token| {
                let response = s
                    .client
                    .clone()
                    .list_join_requests(pb::ListJoinRequestsRequest {
                        cluster_id: cluster_id.clone(),
                        status: status.wire().into(),
                        page: page(&token),
                    })
                    .await
                    .map_err(|e| s.fail(e))?
                    .into_inner();
                Ok((response.requests, response.next_page_token))
            })
            .await?;
            let mut table = Table::new(&[
                "JOIN REQUEST",
                "CLUSTER",
                "STATUS",
                "HOSTNAME",
                "FINGERPRINT",
                "ROLES",
                "CREATED",
            ]);
            for r in &requests {
                let hostname = r.facts.as_ref().map(|f| f.hostname.as_str()).unwrap_or("");
                table.row(vec![
                    r.join_request_id.clone(),
                    r.cluster_id.clone(),
                    status_name(r.status),
                    or_dash(hostname),
                    short(&r.fingerprint, 16),
                    or_dash(&r.requested_roles.join(",")),
                    time(r.created_at_unix_ms),
                ]);
            }
            let json =
                json!({"requests": requests.iter().map(join_request_json).collect::<Vec<_>>()});
            print_list(format, &table, &json);
        }
        JoinRequestCommand::Show { join_request_id } => {
            let request = s
                .client
                .clone()
                .get_join_request(pb::GetJoinRequestRequest { join_request_id })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            print_join_request(format, &request);
        }
        JoinRequestCommand::Approve {
            join_request_id,
            node_id,
        } => {
            let request = pb::ReviewJoinRequestRequest {
                join_request_id,
                reason: String::new(),
                node_id: node_id.unwrap_or_default(),
            };
            let approved = review(&s, true, request).await?;
            if approved.key_history.iter().any(|e| e.status == "revoked") {
                eprintln!(
                    "warning: this key had a revoked certificate before (see key history); it joined with a platform owner's override"
                );
            }
            print_join_request(format, &approved);
        }
        JoinRequestCommand::AllowRevokedKey {
            cluster,
            fingerprint,
            reason,
        } => {
            let response = s
                .client
                .clone()
                .allow_revoked_key(pb::AllowRevokedKeyRequest {
                    cluster_id: cluster,
                    fingerprint,
                    reason,
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            let rows = [
                ("fingerprint", response.fingerprint.clone()),
                ("key history", key_history_text(&response.key_history)),
                (
                    "allowed",
                    "one more join request of this key to the cluster".to_string(),
                ),
            ];
            let json = json!({
                "fingerprint": response.fingerprint,
                "key_history": response.key_history.iter().map(key_history_json).collect::<Vec<_>>(),
            });
            print_object(format, &rows, &json);
        }
        JoinRequestCommand::Reject {
            join_request_id,
            reason,
        } => {
            if reason.trim().is_empty() {
                anyhow::bail!("--reason must say why the request is rejected");
            }
            let request = pb::ReviewJoinRequestRequest {
                join_request_id,
                reason,
                node_id: String::new(),
            };
            print_join_request(format, &review(&s, false, request).await?);
        }
    }
    Ok(())
}
