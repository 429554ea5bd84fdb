//! `rapctl authority status|promote|rejoin`: a cluster's authority group
//! and loss-of-quorum recovery (docs/operations.md).

use crate::client::{self, Conn};
use crate::errors::CliError;
use crate::output::Format;
use crate::table::{Table, or_dash, print_object, time};
use anyhow::Result;
use rap_proto::pb;
use serde_json::{Value, json};

/// `rapctl authority ...`.
#[derive(clap::Args, Debug)]
pub struct AuthorityArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: AuthorityCommand,
}

/// Authority group commands.
#[derive(clap::Subcommand, Debug)]
enum AuthorityCommand {
    /// Show the authority term, the last fence sequence, the leader and
    /// how each storage node sees the group (partition view, voters
    /// reachable).
    Status {
        /// The cluster id.
        cluster_id: String,
    },
    /// Loss-of-quorum recovery (platform owner): re-form the group at the
    /// next authority term from the surviving voters. Refused while the
    /// group has a quorum. Old-term fences are refused from then on; the
    /// other voters are retired until `authority rejoin`.
    Promote {
        /// The cluster id.
        cluster_id: String,
        /// A surviving voter's node id (repeat for every survivor).
        #[arg(long = "survivor", required = true)]
        survivors: Vec<String>,
        /// The authority term being replaced, as `authority status` shows
        /// it; refused if it is no longer current.
        #[arg(long, required = true, value_parser = clap::value_parser!(u64).range(1..))]
        expected_term: u64,
    },
    /// Bring a retired storage node (a voter left out of a promotion) back
    /// into the current term as a voter (platform owner). Its old Raft
    /// state is kept aside on the node, never deleted.
    Rejoin {
        /// The cluster id.
        cluster_id: String,
        /// The retired storage node's id.
        node_id: String,
    },
}

/// The lower-case name of a partition view (`unreachable` when the node
/// did not answer).
fn view_name(view: i32) -> &'static str {
    match pb::PartitionView::try_from(view).unwrap_or(pb::PartitionView::Unspecified) {
        pb::PartitionView::Healthy => "healthy",
        pb::PartitionView::Degraded => "degraded",
        pb::PartitionView::Minority => "minority",
        pb::PartitionView::Fenced => "fenced",
        pb::PartitionView::Unspecified => "unreachable",
    }
}

fn status_json(s: &pb::AuthorityStatus) -> Value {
    json!({
        "cluster_id": s.cluster_id,
        "authority_term": s.authority_term,
        "last_fence_seq": s.last_fence_seq,
        "leader_id": s.leader_id,
        "observations": s.observations.iter().map(|o| json!({
            "node_id": o.node_id,
            "view": view_name(o.view),
            "reachable_voters": o.reachable_voters,
            "total_voters": o.total_voters,
            "observed_at_unix_ms": o.observed_at_unix_ms,
        })).collect::<Vec<_>>(),
    })
}

/// Prints a status: the group's rows, then one row per storage node.
fn print_status(format: Format, s: &pb::AuthorityStatus) {
    let rows = [
        ("cluster", s.cluster_id.clone()),
        ("authority term", s.authority_term.to_string()),
        ("last fence seq", s.last_fence_seq.to_string()),
        ("leader", or_dash(&s.leader_id)),
    ];
    print_object(format, &rows, &status_json(s));
    if format == Format::Table && !s.observations.is_empty() {
        crate::outln!();
        let mut table = Table::new(&["STORAGE NODE", "VIEW", "REACHABLE", "OBSERVED"]);
        for o in &s.observations {
            let reachable = if o.total_voters == 0 {
                "-".to_string()
            } else {
                format!("{}/{}", o.reachable_voters, o.total_voters)
            };
            table.row(vec![
                o.node_id.clone(),
                view_name(o.view).to_string(),
                reachable,
                time(o.observed_at_unix_ms),
            ]);
        }
        table.print();
    }
}

/// A better next step than the generic hint for a failed promotion.
fn promote_hint(error: &mut anyhow::Error, cluster_id: &str) {
    let Some(failure) = error.downcast_mut::<CliError>() else {
        return;
    };
    let status = format!("`rapctl authority status {cluster_id}`");
    let hint = if failure.message.contains("records authority term") {
        format!(
            "the control plane moved to the new term but the group is not re-formed yet; {status} \
             shows each storage node; run the command the message gives once the survivors are \
             reachable"
        )
    } else if failure.message.contains("QUORUM_PRESENT") {
        format!(
            "a survivor still reaches a quorum, so the group is not lost (or the promotion already \
             took effect); {status} shows each storage node's view; nothing was changed"
        )
    } else if failure.code == "DEADLINE_EXCEEDED" {
        format!(
            "the promotion goes on at the control plane even though this call gave up; check \
             {status} before running it again"
        )
    } else {
        return;
    };
    failure.hint = Some(hint);
}

/// Runs `rapctl authority ...`.
pub async fn run_authority(args: AuthorityArgs, format: Format) -> Result<()> {
    let s = client::connect(&args.conn, "authority").await?;
    match args.command {
        AuthorityCommand::Status { cluster_id } => {
            let status = s
                .client
                .clone()
                .get_authority_status(pb::GetAuthorityStatusRequest { cluster_id })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            print_status(format, &status);
        }
        AuthorityCommand::Promote {
            cluster_id,
            survivors,
            expected_term,
        } => {
            let request = pb::PromotePartitionRequest {
                cluster_id: cluster_id.clone(),
                survivors,
                expected_term,
            };
            let status = s
                .client
                .clone()
                .promote_partition(request)
                .await
                .map_err(|e| {
                    let mut error = s.fail(e);
                    promote_hint(&mut error, &cluster_id);
                    error
                })?
                .into_inner();
            if format == Format::Table {
                crate::outln!(
                    "promoted cluster {} to authority term {}",
                    status.cluster_id,
                    status.authority_term
                );
            }
            print_status(format, &status);
        }
        AuthorityCommand::Rejoin {
            cluster_id,
            node_id,
        } => {
            let status = s
                .client
                .clone()
                .rejoin_node(pb::RejoinNodeRequest {
                    cluster_id,
                    node_id: node_id.clone(),
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            if format == Format::Table {
                crate::outln!(
                    "{node_id} rejoined cluster {} at authority term {}",
                    status.cluster_id,
                    status.authority_term
                );
            }
            print_status(format, &status);
        }
    }
    Ok(())
}
