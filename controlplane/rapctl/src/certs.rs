//! `rapctl certs check-expiration`: which certificates end soon (as
//! `kubeadm certs check-expiration` does for a Kubernetes control plane).

use crate::client::{self, Conn, all_pages, page};
use crate::cluster::parse_duration_at_most;
use crate::output::Format;
use crate::table::{Table, or_dash, print_list, time};
use anyhow::Result;
use rap_controlplane::certificates::{STATE_EXPIRED, STATE_EXPIRING, STATE_UNREADABLE};
use rap_controlplane::limits::CERT_EXPIRY_WINDOW_MAX;
use rap_proto::pb;
use serde_json::json;

/// `rapctl certs ...`.
#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: CertsCommand,
}

/// Certificate commands.
#[derive(clap::Subcommand, Debug)]
enum CertsCommand {
    /// List the certificates that expire within a window (expired ones
    /// too), soonest first: nodes', storage nodes', the CAs' and the
    /// control plane's own; says which renew by themselves.
    CheckExpiration {
        /// Only this cluster (default: every cluster and the platform's
        /// own certificates).
        #[arg(long)]
        cluster: Option<String>,
        /// The window: `30d`, `12h`, ... (at most 20 years).
        #[arg(long, default_value = "30d", value_parser = parse_window)]
        within: u64,
    },
}

fn parse_window(text: &str) -> Result<u64, String> {
    parse_duration_at_most(text, CERT_EXPIRY_WINDOW_MAX)
}

/// Time left until `not_after_unix_ms` from `now_unix_ms`, in the largest
/// whole unit (`12d`, `5h`, `40m`), negative once passed.
fn left(not_after_unix_ms: i64, now_unix_ms: i64) -> String {
    let seconds = (not_after_unix_ms - now_unix_ms) / 1000;
    let (sign, seconds) = if seconds < 0 {
        ("-", -seconds)
    } else {
        ("", seconds)
    };
    let text = match seconds {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3600 => format!("{}h", s / 3600),
        s => format!("{}m", s / 60),
    };
    format!("{sign}{text}")
}

/// Runs `rapctl certs ...`.
pub async fn run_certs(args: CertsArgs, format: Format) -> Result<()> {
    let s = client::connect(&args.conn, "certs").await?;
    match args.command {
        CertsCommand::CheckExpiration { cluster, within } => {
            let mut checked_at = 0;
            let certificates = all_pages(async |token| {
                let response = s
                    .client
                    .clone()
                    .list_expiring_certificates(pb::ListExpiringCertificatesRequest {
                        cluster_id: cluster.clone().unwrap_or_default(),
                        within_seconds: within,
                        page: page(&token),
                    })
                    .await
                    .map_err(|e| s.fail(e))?
                    .into_inner();
                checked_at = response.checked_at_unix_ms;
                Ok((response.certificates, response.next_page_token))
            })
            .await?;
            let mut table = Table::new(&[
                "CLUSTER",
                "KIND",
                "SUBJECT",
                "SERIAL",
                "NOT AFTER",
                "LEFT",
                "STATE",
                "RENEWS ITSELF",
            ]);
            for c in &certificates {
                let unreadable = c.state == STATE_UNREADABLE;
                table.row(vec![
                    or_dash(&c.cluster_id),
                    c.kind.clone(),
                    c.subject.clone(),
                    or_dash(&c.serial),
                    time(c.not_after_unix_ms),
                    if unreadable {
                        "-".into()
                    } else {
                        left(c.not_after_unix_ms, checked_at)
                    },
                    if unreadable {
                        format!("{}: {}", c.state, c.error)
                    } else {
                        c.state.clone()
                    },
                    if c.renewed_automatically { "yes" } else { "no" }.into(),
                ]);
            }
            let json = json!({
                "checked_at_unix_ms": checked_at,
                "within_seconds": within,
                "certificates": certificates.iter().map(|c| json!({
                    "cluster_id": c.cluster_id,
                    "kind": c.kind,
                    "subject": c.subject,
                    "serial": c.serial,
                    "not_after_unix_ms": c.not_after_unix_ms,
                    "state": c.state,
                    "renewed_automatically": c.renewed_automatically,
                    "error": c.error,
                })).collect::<Vec<_>>(),
            });
            print_list(format, &table, &json);
            if format == Format::Table {
                let count = |state: &str| certificates.iter().filter(|c| c.state == state).count();
                eprintln!(
                    "{} expired, {} expiring within {}, {} unreadable",
                    count(STATE_EXPIRED),
                    count(STATE_EXPIRING),
                    left(i64::try_from(within).unwrap_or(i64::MAX / 1000) * 1000, 0),
                    count(STATE_UNREADABLE),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_reads_in_the_largest_unit() {
        assert_eq!(left(31 * 86_400_000, 0), "31d");
        assert_eq!(left(5 * 3_600_000 + 1, 0), "5h");
        assert_eq!(left(40 * 60_000, 0), "40m");
        assert_eq!(left(0, 2 * 86_400_000), "-2d");
        assert_eq!(parse_window("30d"), Ok(30 * 86_400));
        assert!(parse_window("21000d").is_err());
    }
}
