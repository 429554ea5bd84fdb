//! `rapctl snapshot publish|get|list`: the shards the control plane
//! published to a cluster's authority group, through the admin API.

use crate::client::{self, Conn, all_pages, page};
use crate::output::Format;
use crate::table::{Table, print_list, time};
use anyhow::{Context, Result};
use rap_proto::pb;
use serde_json::json;
use std::path::PathBuf;

/// Commands on published shards (`rapctl snapshot publish|get|list`).
#[derive(clap::Subcommand, Debug)]
pub enum PublishedCommand {
    /// Compile and publish now: the named scopes, or (none named) every
    /// dirty scope and every scope whose content changed. Unchanged scopes
    /// are not published again.
    Publish {
        #[command(flatten)]
        conn: Conn,
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// A scope to publish (repeatable), e.g. node/n1, trust/revocations.
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Fetch the group's newest envelope of a scope into a file (check it
    /// with `rapctl snapshot verify`).
    Get {
        #[command(flatten)]
        conn: Conn,
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// The scope.
        #[arg(long)]
        scope: String,
        /// Where to write the envelope.
        #[arg(long)]
        out: PathBuf,
    },
    /// List the newest recorded publication of every scope.
    List {
        #[command(flatten)]
        conn: Conn,
        /// The cluster.
        #[arg(long)]
        cluster: String,
    },
}

/// Runs a command on published shards.
pub async fn run(command: PublishedCommand, format: Format) -> Result<()> {
    let conn = match &command {
        PublishedCommand::Publish { conn, .. }
        | PublishedCommand::Get { conn, .. }
        | PublishedCommand::List { conn, .. } => conn,
    };
    let s = client::connect(conn, "snapshot").await?;
    match command {
        PublishedCommand::Publish {
            cluster, scopes, ..
        } => {
            let published = s
                .client
                .clone()
                .publish_snapshot(pb::PublishSnapshotRequest {
                    cluster_id: cluster,
                    scopes,
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner()
                .published;
            let mut table = Table::new(&["SCOPE", "VERSION", "TERM", "CONTENT HASH"]);
            for p in &published {
                table.row(vec![
                    p.scope.clone(),
                    p.version.to_string(),
                    p.authority_term.to_string(),
                    hex::encode(&p.content_hash),
                ]);
            }
            let json = json!({"published": published.iter().map(|p| json!({
                "scope": p.scope,
                "version": p.version,
                "authority_term": p.authority_term,
                "content_hash": hex::encode(&p.content_hash),
            })).collect::<Vec<_>>()});
            print_list(format, &table, &json);
        }
        PublishedCommand::Get {
            cluster,
            scope,
            out,
            ..
        } => {
            let envelope = s
                .client
                .clone()
                .get_snapshot(pb::GetSnapshotRequest {
                    cluster_id: cluster,
                    scope: scope.clone(),
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner()
                .envelope;
            std::fs::write(&out, &envelope).with_context(|| format!("write {}", out.display()))?;
            let decoded = rap_proto::envelope::decode(&envelope)?;
            crate::output::print(
                format,
                &[
                    ("SCOPE", scope),
                    ("VERSION", decoded.header.version.0.to_string()),
                    ("TERM", decoded.header.authority_term.0.to_string()),
                    ("BYTES", envelope.len().to_string()),
                    ("FILE", out.display().to_string()),
                ],
                &json!({
                    "scope": decoded.header.scope.to_string(),
                    "version": decoded.header.version.0,
                    "authority_term": decoded.header.authority_term.0,
                    "bytes": envelope.len(),
                    "file": out.display().to_string(),
                }),
            );
        }
        PublishedCommand::List { cluster, .. } => {
            let records = all_pages(async |token| {
                let response = s
                    .client
                    .clone()
                    .list_snapshots(pb::ListSnapshotsRequest {
                        cluster_id: cluster.clone(),
                        page: page(&token),
                    })
                    .await
                    .map_err(|e| s.fail(e))?
                    .into_inner();
                Ok((response.snapshots, response.next_page_token))
            })
            .await?;
            let mut table = Table::new(&["SCOPE", "VERSION", "TERM", "PUBLISHED", "BY"]);
            for r in &records {
                table.row(vec![
                    r.scope.clone(),
                    r.version.to_string(),
                    r.authority_term.to_string(),
                    time(r.published_at_unix_ms),
                    r.published_by.clone(),
                ]);
            }
            let json = json!({"snapshots": records.iter().map(|r| json!({
                "scope": r.scope,
                "version": r.version,
                "authority_term": r.authority_term,
                "content_hash": hex::encode(&r.content_hash),
                "published_by": r.published_by,
                "published_at_unix_ms": r.published_at_unix_ms,
            })).collect::<Vec<_>>()});
            print_list(format, &table, &json);
        }
    }
    Ok(())
}
