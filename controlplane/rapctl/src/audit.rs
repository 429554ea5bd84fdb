//! `rapctl audit list|tail`: the audit log.
//!
//! The API's paging is by event id: with `after_event_id = 0` it returns
//! the newest `page_size` events (its page token pages back to older
//! ones), otherwise the oldest ones after that id; either way in
//! ascending id order. Filters (actor, action or action prefix, target,
//! result) narrow both.

use crate::client::{self, Conn, PAGE_SIZE, Session};
use crate::errors::clean;
use crate::output::Format;
use crate::table::{Table, or_dash, print_list, time};
use anyhow::Result;
use rap_proto::pb;
use serde_json::{Value, json};
use std::time::Duration;

/// Events `audit tail` shows before it follows.
pub const TAIL_EVENTS: u32 = 20;
/// How often `audit tail --follow` asks for new events.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
/// Default `audit list --limit`.
const LIST_LIMIT_DEFAULT: u32 = 100;
/// Largest `audit list --limit` (one page).
const LIST_LIMIT_MAX: u32 = PAGE_SIZE;

/// `rapctl audit ...`.
#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: AuditCommand,
}

/// Which events to show (all given must hold).
#[derive(clap::Args, Debug, Default)]
struct Filters {
    /// Only this cluster's events.
    #[arg(long)]
    cluster: Option<String>,
    /// Only events by this actor (`owner`, `principal:<id>`, ...).
    #[arg(long)]
    actor: Option<String>,
    /// Only this action (`join-request.approve`), or every action under a
    /// prefix ending in a dot (`join-request.`).
    #[arg(long)]
    action: Option<String>,
    /// Only events on this target (a node, request or token id, ...) or
    /// under it (`agent-1` also finds `agent-1/rdp-worker`).
    #[arg(long)]
    target: Option<String>,
    /// Only events with this result.
    #[arg(long, value_parser = ["ok", "refused", "failed"])]
    result: Option<String>,
}

impl Filters {
    /// A request for the events these filters keep (no paging yet).
    fn request(&self) -> pb::ListAuditEventsRequest {
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        pb::ListAuditEventsRequest {
            cluster_id: text(&self.cluster),
            actor: text(&self.actor),
            action: text(&self.action),
            target: text(&self.target),
            result: text(&self.result),
            ..Default::default()
        }
    }
}

/// Audit commands.
#[derive(clap::Subcommand, Debug)]
enum AuditCommand {
    /// List the newest audit events (or, with --after, the oldest ones
    /// after an event id), in ascending id order; when older events are
    /// left, says how to see them (--before).
    List {
        #[command(flatten)]
        filters: Filters,
        /// At most this many events.
        #[arg(long, default_value_t = LIST_LIMIT_DEFAULT,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(LIST_LIMIT_MAX)))]
        limit: u32,
        /// List the events after this id, oldest first (for paging: pass
        /// the last id shown).
        #[arg(long, default_value_t = 0, conflicts_with = "before")]
        after: u64,
        /// List the newest events older than this id (for paging back:
        /// pass the first id shown).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        before: Option<u64>,
    },
    /// Show the last 20 events; with --follow, keep printing new ones every
    /// second until Ctrl-C. With `-o json`, one JSON object per line.
    Tail {
        #[command(flatten)]
        filters: Filters,
        /// Keep printing new events until Ctrl-C.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

fn event_json(e: &pb::AuditEvent) -> Value {
    json!({
        "event_id": e.event_id,
        "cluster_id": e.cluster_id,
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "result": e.result,
        "reason": e.reason,
        "fence": e.fence.as_ref().map(|f| json!({
            "cluster_id": f.cluster_id,
            "authority_term": f.authority_term,
            "seq": f.seq,
            "log_index": f.log_index,
        })),
        "at_unix_ms": e.at_unix_ms,
        "details": serde_json::from_str::<Value>(&e.details_json).unwrap_or(Value::Null),
    })
}

/// A fence as `term/seq`, `-` without one.
fn fence_text(e: &pb::AuditEvent) -> String {
    e.fence.as_ref().map_or_else(
        || "-".to_string(),
        |f| format!("{}/{}", f.authority_term, f.seq),
    )
}

/// One event as a log line, for `audit tail`.
fn event_line(e: &pb::AuditEvent) -> String {
    let reason = if e.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", e.reason)
    };
    clean(&format!(
        "{} #{} [{}] {} {} {} -> {}{reason}",
        time(e.at_unix_ms),
        e.event_id,
        or_dash(&e.cluster_id),
        or_dash(&e.actor),
        or_dash(&e.action),
        or_dash(&e.target),
        or_dash(&e.result),
    ))
}

/// One page of the events `filters` keep: after `after`, or (with
/// `after` 0) the newest ones below `before`; sorted by id, with the
/// page token that continues the listing ("" at its end).
async fn page(
    s: &Session,
    filters: &Filters,
    after: u64,
    before: Option<u64>,
    page_size: u32,
) -> Result<(Vec<pb::AuditEvent>, String), tonic::Status> {
    let request = pb::ListAuditEventsRequest {
        after_event_id: after,
        page: Some(pb::PageRequest {
            page_size,
            page_token: before.map(|id| id.to_string()).unwrap_or_default(),
        }),
        ..filters.request()
    };
    let answer = s
        .client
        .clone()
        .list_audit_events(request)
        .await?
        .into_inner();
    let mut events = answer.events;
    events.retain(|e| e.event_id > after && before.is_none_or(|before| e.event_id < before));
    events.sort_by_key(|e| e.event_id);
    Ok((events, answer.next_page_token))
}

/// One page of events after `after`, sorted by id.
async fn page_after(
    s: &Session,
    filters: &Filters,
    after: u64,
    page_size: u32,
) -> Result<Vec<pb::AuditEvent>, tonic::Status> {
    Ok(page(s, filters, after, None, page_size).await?.0)
}

/// Every event after `after` (paging by event id), handing each page to
/// `each`; returns the highest id seen (or `after`).
async fn drain_after(
    s: &Session,
    filters: &Filters,
    mut after: u64,
    mut each: impl FnMut(Vec<pb::AuditEvent>),
) -> Result<u64, tonic::Status> {
    loop {
        let events = page_after(s, filters, after, PAGE_SIZE).await?;
        let Some(last) = events.last().map(|e| e.event_id) else {
            return Ok(after);
        };
        after = last;
        each(events);
    }
}

/// Runs `rapctl audit ...`.
pub async fn run_audit(args: AuditArgs, format: Format) -> Result<()> {
    let s = client::connect(&args.conn, "audit").await?;
    match args.command {
        AuditCommand::List {
            filters,
            limit,
            after,
            before,
        } => {
            let (events, next) = page(&s, &filters, after, before, limit)
                .await
                .map_err(|e| s.fail(e))?;
            let mut table = Table::new(&[
                "ID", "TIME", "CLUSTER", "ACTOR", "ACTION", "TARGET", "RESULT", "FENCE", "REASON",
            ]);
            for e in &events {
                table.row(vec![
                    e.event_id.to_string(),
                    time(e.at_unix_ms),
                    or_dash(&e.cluster_id),
                    or_dash(&e.actor),
                    or_dash(&e.action),
                    or_dash(&e.target),
                    or_dash(&e.result),
                    fence_text(e),
                    or_dash(&e.reason),
                ]);
            }
            let json = json!({
                "events": events.iter().map(event_json).collect::<Vec<_>>(),
                "next_page_token": next,
            });
            print_list(format, &table, &json);
            // Newest first: the token is the oldest id shown, and older
            // events are left.
            if after == 0 && !next.is_empty() && format == Format::Table {
                eprintln!("older events: add --before {next}");
            }
        }
        AuditCommand::Tail { filters, follow } => {
            let print = |e: &pb::AuditEvent| match format {
                Format::Json => crate::outln!("{}", event_json(e)),
                Format::Table => crate::outln!("{}", event_line(e)),
            };
            let last = page_after(&s, &filters, 0, TAIL_EVENTS)
                .await
                .map_err(|e| s.fail(e))?;
            last.iter().for_each(print);
            let mut cursor = last.last().map_or(0, |e| e.event_id);
            if !follow {
                return Ok(());
            }
            let ctrl_c = tokio::signal::ctrl_c();
            tokio::pin!(ctrl_c);
            let mut warned = false;
            loop {
                tokio::select! {
                    _ = &mut ctrl_c => return Ok(()),
                    _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                }
                let poll = drain_after(&s, &filters, cursor, |page| page.iter().for_each(print));
                let result = tokio::select! {
                    _ = &mut ctrl_c => return Ok(()),
                    result = poll => result,
                };
                match result {
                    Ok(next) => {
                        cursor = next;
                        warned = false;
                    }
                    // The control plane restarting is not the end of a tail.
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                        ) =>
                    {
                        if !warned {
                            eprintln!("warning: {}; retrying", s.fail(status));
                            warned = true;
                        }
                    }
                    Err(status) => return Err(s.fail(status)),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_are_readable_and_clean() {
        let event = pb::AuditEvent {
            event_id: 7,
            cluster_id: "c1".into(),
            actor: "owner".into(),
            action: "join_request.reject".into(),
            target: "jr-1".into(),
            result: "ok".into(),
            reason: "unknown\u{1b}[2Jhost".into(),
            fence: None,
            at_unix_ms: 1_000,
            details_json: "{}".into(),
        };
        assert_eq!(
            event_line(&event),
            "1970-01-01T00:00:01Z #7 [c1] owner join_request.reject jr-1 -> ok: \
             unknown\\u{1b}[2Jhost"
        );
        assert_eq!(fence_text(&event), "-");
    }
}
