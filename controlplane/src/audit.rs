//! Audit events: every mutation and every refused mutation (every refusal
//! of a trust action is audited). Successful
//! mutations write their event inside the mutation's transaction; refusals
//! write theirs in a transaction of their own, since the mutation's was
//! rolled back. The table is append-only in the schema (migration 0002):
//! rows are never updated or deleted, and kept forever.
//!
//! [`record_refusal`] is the one place refusals go through:
//! * every refusal is counted per (action, code) for `/metrics`
//!   ([`refusal_counts`]);
//! * refusals by authenticated actors (principals, nodes with a verified
//!   certificate) are always written;
//! * refusals by anonymous callers ([`is_anonymous`]: no or an unusable
//!   credential) are sampled when the API layer says who the peer is
//!   ([`with_peer`]): at most [`AUDIT_ANONYMOUS_PER_SOURCE`] rows per
//!   source (peer IPv4 address or IPv6 /64, else the actor) per
//!   [`AUDIT_ANONYMOUS_WINDOW`], [`AUDIT_ANONYMOUS_SOURCES_MAX`] sources
//!   tracked (the rest share one budget); the
//!   next written row of that source carries how many were left out
//!   (`details.suppressed_before`), and all are counted in metrics;
//! * targets, actors and reasons are cut to [`AUDIT_TARGET_BYTES_MAX`] /
//!   [`AUDIT_REASON_BYTES_MAX`] in the log line and in the row.

use crate::error::{Error, Result};
use crate::limits::{
    AUDIT_ANONYMOUS_PER_SOURCE, AUDIT_ANONYMOUS_SOURCES_MAX, AUDIT_ANONYMOUS_WINDOW,
};
use rap_core::Fence;
use sqlx::PgPool;
use sqlx::postgres::PgConnection;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Longest audit reason stored (longer ones are cut).
pub const AUDIT_REASON_BYTES_MAX: usize = 1024;
/// Longest audit target stored.
pub const AUDIT_TARGET_BYTES_MAX: usize = 256;

/// Longest action filter (the schema's longest action name).
pub const AUDIT_ACTION_FILTER_BYTES_MAX: usize = 64;

/// The results an event may have, as stored.
pub const AUDIT_RESULTS: [&str; 3] = ["ok", "refused", "failed"];

/// Actor of a caller that presented no usable credential.
pub const ANONYMOUS: &str = "anonymous";
/// Actor prefixes of callers that are not authenticated principals: the
/// holder of a join token (the token is what is being checked), and an
/// API token whose secret matched but that is refused (expired, revoked,
/// principal disabled).
pub const UNAUTHENTICATED_ACTOR_PREFIXES: &[&str] = &["join-token:", "api-token:"];
/// The shared source of anonymous refusals from sources beyond
/// [`AUDIT_ANONYMOUS_SOURCES_MAX`].
pub const OVERFLOW_SOURCE: &str = "(other sources)";

/// Whether `actor` is not an authenticated principal or node: its
/// refusals are sampled, not all written.
pub fn is_anonymous(actor: &str) -> bool {
    actor == ANONYMOUS
        || UNAUTHENTICATED_ACTOR_PREFIXES
            .iter()
            .any(|prefix| actor.starts_with(prefix))
}

/// Who does what to what: the fixed part of an audit event.
#[derive(Clone, Debug)]
pub struct Action {
    /// The principal (or `node:<id>`, `anonymous`).
    pub actor: String,
    /// Dotted action name, e.g. `join-request.approve`.
    pub action: &'static str,
    /// The cluster, when the action concerns one.
    pub cluster_id: Option<String>,
    /// The object acted on.
    pub target: String,
    /// The principal acted within a TOTP step-up: the event's details say
    /// `"step_up": true`.
    pub step_up: bool,
}

impl Action {
    /// Marks the action as done within a step-up when `principal` has
    /// TOTP and its token stepped up ([`crate::auth::STEP_UP_ACTIONS`]).
    pub fn with_step_up(mut self, principal: &crate::auth::Principal) -> Self {
        self.step_up = principal.totp_enrolled && principal.stepped_up;
        self
    }

    /// An action on `target` in `cluster_id`.
    pub fn new(
        actor: impl Into<String>,
        action: &'static str,
        cluster_id: Option<&str>,
        target: impl Into<String>,
    ) -> Self {
        Action {
            actor: actor.into(),
            action,
            cluster_id: cluster_id.map(str::to_string),
            target: target.into(),
            step_up: false,
        }
    }
}

/// Writes a successful event inside `conn`'s transaction.
pub async fn record_ok(
    conn: &mut PgConnection,
    action: &Action,
    fence: Option<&Fence>,
    details: serde_json::Value,
) -> Result<i64> {
    insert(conn, action, "ok", "", fence, details).await
}

/// Writes an observed change (the watcher's: a partition detected, a
/// node's health) inside `conn`'s transaction, `reason` saying what
/// changed ("healthy -> minority").
pub async fn record_change(
    conn: &mut PgConnection,
    action: &Action,
    reason: &str,
    details: serde_json::Value,
) -> Result<i64> {
    insert(conn, action, "ok", reason, None, details).await
}

/// Counts `error` in metrics, then writes it as a refusal (`refused`) or
/// failure (`failed`) in its own transaction, unless it is an anonymous
/// refusal over its source's budget (see the module docs). A failure to
/// audit is logged, never hides the refusal.
pub async fn record_refusal(pool: &PgPool, action: &Action, error: &Error) {
    count_refusal(action.action, error.code());
    let peer = current_peer();
    let source = peer
        .as_ref()
        .map(|p| source_of(p.ip, &action.actor).to_string());
    let mut details = serde_json::json!({ "code": error.code() });
    if let Some(source) = &source {
        details["source"] = serde_json::Value::from(source.as_str());
    }
    if let (Some(peer), Some(source)) = (&peer, &source)
        && is_anonymous(&action.actor)
    {
        match peer.sampler.admit(source, Instant::now()) {
            Admission::Write { suppressed_before } => {
                if suppressed_before > 0 {
                    details["suppressed_before"] = serde_json::Value::from(suppressed_before);
                }
            }
            Admission::Suppress { first_in_window } => {
                SUPPRESSED.fetch_add(1, Ordering::Relaxed);
                if first_in_window {
                    tracing::warn!(
                        %source,
                        action = action.action,
                        code = error.code(),
                        per_source = AUDIT_ANONYMOUS_PER_SOURCE,
                        window_s = AUDIT_ANONYMOUS_WINDOW.as_secs(),
                        "anonymous refusals from this source are over their audit budget: \
                         further ones in this window are counted in metrics, not audited"
                    );
                }
                return;
            }
        }
    }
    let result = if matches!(
        error,
        Error::Database(_) | Error::Internal(_) | Error::Keys(_) | Error::Migrate(_)
    ) {
        "failed"
    } else {
        "refused"
    };
    let reason = error.to_string();
    log_refusal(action, error.code(), &reason, source.as_deref());
    let written = async {
        let mut conn = pool.acquire().await?;
        insert(&mut conn, action, result, &reason, None, details).await
    }
    .await;
    if let Err(e) = written {
        tracing::error!(action = action.action, error = %e, "could not write the audit event of a refusal");
    }
}

/// The log line of a written refusal: actor, target and reason cut like
/// the audit row.
fn log_refusal(action: &Action, code: &str, reason: &str, source: Option<&str>) {
    tracing::info!(
        cluster_id = action.cluster_id.as_deref().unwrap_or(""),
        actor = cut(&action.actor, AUDIT_TARGET_BYTES_MAX),
        action = action.action,
        target = cut(&action.target, AUDIT_TARGET_BYTES_MAX),
        code,
        source = source.unwrap_or(""),
        "refused: {}",
        cut(reason, AUDIT_REASON_BYTES_MAX)
    );
}

/// Passes `result` through, auditing it when it is an error.
pub async fn audited<T>(pool: &PgPool, action: &Action, result: Result<T>) -> Result<T> {
    if let Err(error) = &result {
        record_refusal(pool, action, error).await;
    }
    result
}

/// The precheck step of a mutation: `checked` (permissions, input, made
/// before any transaction) passes through; a refusal is audited, then
/// returned. Unfenced mutations go through it
/// ([`crate::fencing::run_unfenced`]); fenced ones audit through their
/// source of truth ([`crate::truth::SourceOfTruth::record_refusal`], this
/// module's [`record_refusal`] for PostgreSQL).
pub async fn refuse_unless<C>(pool: &PgPool, action: &Action, checked: Result<C>) -> Result<C> {
    audited(pool, action, checked).await
}

/// The filter and start of a listing, checked: `Err(InvalidArgument)`
/// names the field that is wrong.
fn listing<'a>(
    request: &'a rap_proto::pb::ListAuditEventsRequest,
    page: &crate::page::Page,
) -> Result<(crate::db::audit::Filter<'a>, crate::db::audit::Start)> {
    use crate::db::audit::{Filter, Start};
    for (field, value) in [("actor", &request.actor), ("target", &request.target)] {
        if value.len() > AUDIT_TARGET_BYTES_MAX {
            return Err(Error::invalid(format!(
                "the {field} filter is longer than {AUDIT_TARGET_BYTES_MAX} bytes"
            )));
        }
    }
    let action = request.action.as_str();
    if action.len() > AUDIT_ACTION_FILTER_BYTES_MAX
        || !action
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b))
    {
        return Err(Error::invalid(format!(
            "the action filter must be an action name or a prefix ending in a dot \
             ([a-z0-9._-], at most {AUDIT_ACTION_FILTER_BYTES_MAX} bytes), not {action:?}"
        )));
    }
    let result = request.result.as_str();
    if !result.is_empty() && !AUDIT_RESULTS.contains(&result) {
        return Err(Error::invalid(format!(
            "the result filter must be one of {}, not {result:?}",
            AUDIT_RESULTS.join(", ")
        )));
    }
    let token = if page.after.is_empty() {
        None
    } else {
        let id = page
            .after
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| Error::invalid("the page token is not one this call gave"))?;
        Some(id)
    };
    let after = i64::try_from(request.after_event_id).unwrap_or(i64::MAX);
    let start = match (after, token) {
        (0, None) => Start::Before(i64::MAX),
        (0, Some(id)) => Start::Before(id),
        (after, token) => Start::After(token.unwrap_or(after).max(after)),
    };
    let filter = Filter {
        cluster_id: &request.cluster_id,
        actor: &request.actor,
        action,
        action_prefix: action.ends_with('.'),
        target: &request.target,
        result,
    };
    Ok((filter, start))
}

/// Lists audit events: the newest page, or (with `after_event_id`) the
/// events after that id in order (for `tail`), as the request's filters
/// keep them; a page is in ascending id order, and its token continues
/// the listing (to older events, or after the page).
pub async fn list(
    pool: &PgPool,
    principal: &crate::auth::Principal,
    request: &rap_proto::pb::ListAuditEventsRequest,
) -> Result<rap_proto::pb::ListAuditEventsResponse> {
    principal.require_platform()?;
    let page = crate::page::Page::from_pb(request.page.as_ref());
    let (filter, start) = listing(request, &page)?;
    let mut conn = pool.acquire().await?;
    let mut rows = crate::db::audit::list(&mut conn, &filter, start, page.limit()).await?;
    let next_page_token = page.finish(&mut rows, |row| row.event_id.to_string());
    if matches!(start, crate::db::audit::Start::Before(_)) {
        rows.reverse();
    }
    let events = rows
        .into_iter()
        .map(|row| rap_proto::pb::AuditEvent {
            event_id: u64::try_from(row.event_id).unwrap_or(0),
            cluster_id: row.cluster_id.clone().unwrap_or_default(),
            actor: row.actor,
            action: row.action,
            target: row.target,
            result: row.result,
            reason: row.reason,
            fence: match (row.fence_term, row.fence_seq) {
                (Some(t), Some(s)) => Some(rap_proto::pb::FencingToken {
                    cluster_id: row.cluster_id.unwrap_or_default(),
                    authority_term: u64::try_from(t).unwrap_or(0),
                    seq: u64::try_from(s).unwrap_or(0),
                    log_index: 0,
                }),
                _ => None,
            },
            at_unix_ms: row.at_unix_ms,
            details_json: row.details.to_string(),
        })
        .collect();
    Ok(rap_proto::pb::ListAuditEventsResponse {
        events,
        next_page_token,
    })
}

async fn insert(
    conn: &mut PgConnection,
    action: &Action,
    result: &str,
    reason: &str,
    fence: Option<&Fence>,
    details: serde_json::Value,
) -> Result<i64> {
    let event = crate::db::audit::NewEvent {
        cluster_id: action.cluster_id.as_deref(),
        actor: cut(&action.actor, AUDIT_TARGET_BYTES_MAX),
        action: action.action,
        target: cut(&action.target, AUDIT_TARGET_BYTES_MAX),
        result,
        reason: cut(reason, AUDIT_REASON_BYTES_MAX),
        fence: fence.map(|f| {
            (
                i64::try_from(f.authority_term.0).unwrap_or(i64::MAX),
                i64::try_from(f.seq.0).unwrap_or(i64::MAX),
            )
        }),
    };
    let details = if action.step_up {
        match details {
            serde_json::Value::Object(mut fields) => {
                fields.insert("step_up".into(), serde_json::Value::Bool(true));
                serde_json::Value::Object(fields)
            }
            other => serde_json::json!({"step_up": true, "details": other}),
        }
    } else {
        details
    };
    crate::db::audit::insert(conn, event, details).await
}

/// A caller-given id as a span or log field: cut like an audit target, so
/// a huge id cannot blow up a log line.
pub fn field(text: &str) -> &str {
    cut(text, AUDIT_TARGET_BYTES_MAX)
}

/// `text` cut to at most `max` bytes on a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Refusals counted per (action, code) since the process started.
static REFUSALS: Mutex<BTreeMap<(&'static str, &'static str), u64>> = Mutex::new(BTreeMap::new());
/// Anonymous refusals counted but not written (over their budget).
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

fn count_refusal(action: &'static str, code: &'static str) {
    *REFUSALS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry((action, code))
        .or_default() += 1;
}

/// One `/metrics` series: refusals of `action` with `code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefusalCount {
    /// The audit action.
    pub action: &'static str,
    /// The error code.
    pub code: &'static str,
    /// Refusals since the process started.
    pub count: u64,
}

/// Every refusal counted in this process, by (action, code), sorted. The
/// label values are static strings, so the series are bounded.
pub fn refusal_counts() -> Vec<RefusalCount> {
    REFUSALS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(&(action, code), &count)| RefusalCount {
            action,
            code,
            count,
        })
        .collect()
}

/// Anonymous refusals counted but not written to the audit log.
pub fn suppressed_total() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// What the sampler decided about one anonymous refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Write it; `suppressed_before` refusals of this source were left out
    /// since its last written one.
    Write {
        /// Refusals counted but not written before this one.
        suppressed_before: u64,
    },
    /// Leave it out (counted only); `first_in_window` for the first one
    /// left out in this window (logged once).
    Suppress {
        /// The first suppressed refusal of the source in this window.
        first_in_window: bool,
    },
}

#[derive(Debug)]
struct Window {
    started: Instant,
    written: u32,
    /// Suppressed in this window and not yet reported in a written row.
    suppressed: u64,
}

/// Per-source budget of anonymous refusals written to the audit log
/// (fixed windows). One per server process, shared by its APIs.
#[derive(Debug)]
pub struct RefusalSampler {
    per_source: u32,
    window: Duration,
    sources_max: usize,
    sources: Mutex<HashMap<String, Window>>,
}

impl Default for RefusalSampler {
    fn default() -> Self {
        Self::new(
            AUDIT_ANONYMOUS_PER_SOURCE,
            AUDIT_ANONYMOUS_WINDOW,
            AUDIT_ANONYMOUS_SOURCES_MAX,
        )
    }
}

impl RefusalSampler {
    /// At most `per_source` rows per source per `window`, `sources_max`
    /// sources tracked (values of 0 are raised to 1).
    pub fn new(per_source: u32, window: Duration, sources_max: usize) -> Self {
        RefusalSampler {
            per_source: per_source.max(1),
            window,
            sources_max: sources_max.max(1),
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Decides about one anonymous refusal from `source` at `now`.
    pub fn admit(&self, source: &str, now: Instant) -> Admission {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key = source;
        if !sources.contains_key(key) && sources.len() >= self.sources_max {
            let window = self.window;
            sources.retain(|_, w| now.saturating_duration_since(w.started) < window);
            if sources.len() >= self.sources_max {
                key = OVERFLOW_SOURCE;
            }
        }
        let entry = sources.entry(key.to_string()).or_insert(Window {
            started: now,
            written: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(entry.started) >= self.window {
            // A new window; what the old one left out is reported with
            // the next written row.
            entry.started = now;
            entry.written = 0;
        }
        if entry.written < self.per_source {
            entry.written += 1;
            Admission::Write {
                suppressed_before: std::mem::take(&mut entry.suppressed),
            }
        } else {
            entry.suppressed += 1;
            Admission::Suppress {
                first_in_window: entry.suppressed == 1,
            }
        }
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        self.sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Who is calling, as the API layer knows it: the peer's address and the
/// sampler of this server.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The peer's IP address, when the transport knows it.
    pub ip: Option<IpAddr>,
    /// The sampler anonymous refusals of this call go through.
    pub sampler: Arc<RefusalSampler>,
}

tokio::task_local! {
    static PEER: Peer;
}

/// Runs `call` with `peer` as the caller: refusals recorded inside it
/// know their source, and anonymous ones are sampled. Outside such a
/// scope (library callers, tests) every refusal is written.
pub async fn with_peer<F: Future>(peer: Peer, call: F) -> F::Output {
    PEER.scope(peer, call).await
}

fn current_peer() -> Option<Peer> {
    PEER.try_with(Clone::clone).ok()
}

/// The sampling source: the peer's IPv4 address, or its IPv6 /64 (one
/// host usually holds a whole /64, so single IPv6 addresses would give one
/// attacker endless sources); else the actor (cut).
fn source_of(ip: Option<IpAddr>, actor: &str) -> std::borrow::Cow<'_, str> {
    match ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => std::borrow::Cow::Owned(v4.to_string()),
        Some(IpAddr::V6(v6)) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            std::borrow::Cow::Owned(format!("{}/64", std::net::Ipv6Addr::from(prefix)))
        }
        None => std::borrow::Cow::Borrowed(cut(actor, AUDIT_TARGET_BYTES_MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_prefixes() {
        let v4: IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(source_of(Some(v4), "x"), "10.1.2.3");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        assert_eq!(source_of(Some(mapped), "x"), "10.1.2.3");
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        assert_eq!(source_of(Some(a), "x"), "2001:db8:1:2::/64");
        assert_eq!(source_of(Some(a), "x"), source_of(Some(b), "y"));
        assert_eq!(source_of(None, "anonymous"), "anonymous");
    }

    #[test]
    fn anonymous_actors_are_recognised() {
        assert!(is_anonymous(ANONYMOUS));
        assert!(is_anonymous("join-token:0011"));
        assert!(is_anonymous("api-token:0011"));
        assert!(!is_anonymous("owner"));
        assert!(!is_anonymous("node:n1"));
    }

    // Goal: the sampler writes at most the budget per source per window,
    // reports what it left out with the next written row, keeps sources
    // apart, and shares one budget beyond the tracked sources. Method: a
    // sampler of 3 per window, 2 sources tracked, explicit instants.
    #[test]
    fn sampler_budget_per_source_and_window() {
        let sampler = RefusalSampler::new(3, Duration::from_secs(60), 2);
        let t0 = Instant::now();
        let mut written = 0;
        let mut first = 0;
        for _ in 0..1000 {
            match sampler.admit("10.0.0.1", t0) {
                Admission::Write { suppressed_before } => {
                    assert_eq!(suppressed_before, 0);
                    written += 1;
                }
                Admission::Suppress { first_in_window } => first += u32::from(first_in_window),
            }
        }
        assert_eq!((written, first), (3, 1));
        // Another source has its own budget.
        assert_eq!(
            sampler.admit("10.0.0.2", t0),
            Admission::Write {
                suppressed_before: 0
            }
        );
        // A third source while two are tracked and current: the overflow
        // budget.
        assert_eq!(
            sampler.admit("10.0.0.3", t0),
            Admission::Write {
                suppressed_before: 0
            }
        );
        assert!(sampler.sources() <= 3);
        // Next window: the first row carries the 997 left out.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(
            sampler.admit("10.0.0.1", t1),
            Admission::Write {
                suppressed_before: 997
            }
        );
        assert_eq!(
            sampler.admit("10.0.0.1", t1),
            Admission::Write {
                suppressed_before: 0
            }
        );
    }

    // Goal: a 10 KiB target and reason never reach the log whole. Method:
    // capture the log line of `log_refusal` with a test subscriber.
    #[test]
    fn log_line_cuts_target_and_reason() {
        let capture = rap_core::logging::Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(capture.writer())
            .with_ansi(false)
            .finish();
        let huge = "x".repeat(10 * 1024);
        let action = Action::new(ANONYMOUS, "join-request.status", None, huge.clone());
        tracing::subscriber::with_default(subscriber, || {
            log_refusal(&action, "NOT_FOUND", &huge, Some("127.0.0.1"));
        });
        let line = capture.text();
        assert!(line.contains("refused"), "{line}");
        assert!(!line.contains(&huge), "the whole 10 KiB went into the log");
        assert!(
            line.len() < AUDIT_TARGET_BYTES_MAX + AUDIT_REASON_BYTES_MAX + 512,
            "log line of {} bytes",
            line.len()
        );
    }
}
