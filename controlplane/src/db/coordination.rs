//! Several `rap-controlplane serve` processes on one PostgreSQL: what they
//! must agree on goes through the database, never through one process's
//! memory.
//!
//! # Promotions: one at a time per cluster
//!
//! [`lock_promotion`] takes a transaction-scoped advisory lock
//! (`pg_advisory_xact_lock`, key [`promotion_lock_key`]) on a connection
//! of its own, outside the pool, and keeps that transaction open for the
//! whole promotion, the orders to the storage nodes included. A second
//! promotion of the same cluster, in any process, waits (at most
//! [`PROMOTION_LOCK_WAIT`]) and then finds the term moved on, as a second
//! promotion in one process always did. The lock is the only lock a
//! promotion takes before its work and nothing else takes it, so there is
//! no lock-order cycle; waiters hold no pool connection, so they cannot
//! starve the holder. The lock goes away with its transaction: on
//! [`PromotionLock::release`], on drop, and when the process dies (its
//! connection closes and PostgreSQL ends the transaction).
//!
//! # Identity caches: told on commit, trusted only while listening
//!
//! Every transaction that revokes or rotates a node identity calls
//! [`notify_identities_changed`] (`pg_notify` on [`IDENTITY_CHANNEL`], sent
//! by PostgreSQL only if the transaction commits). Each process runs
//! [`spawn_identity_listener`]: a `LISTEN` connection of its own that
//! drops the named serials from its [`IdentityCache`]. The listener also
//! sends itself a ping every [`LISTENER_PING_INTERVAL`]; PostgreSQL
//! delivers notifications in commit order, so once a ping sent at `t` comes
//! back, every change committed before `t` has been applied.
//! [`IdentityWatch::is_current`] is true only while such a ping is younger
//! than [`IDENTITY_NOTICE_MAX`]: a cache must not answer from memory
//! otherwise (it asks PostgreSQL). A lost or silent listener thus costs
//! lookups, never a stale "active": a change made through any process is
//! seen by every other within [`IDENTITY_NOTICE_MAX`] even while the
//! listener is down. A new listener session empties the cache first, since
//! notifications sent while no session listened are lost.

use crate::error::{Error, Result};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Longest wait of a promotion for another promotion of the same cluster
/// to finish: above the storage nodes' own promotion deadline
/// (`orders::PROMOTE_TIMEOUT`) plus the survey before it.
pub const PROMOTION_LOCK_WAIT: Duration = Duration::from_secs(15 * 60);
/// How long opening a coordination connection (promotion lock, listener)
/// may take.
pub const COORDINATION_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The notification channel of identity changes.
pub const IDENTITY_CHANNEL: &str = "rap_cp_identities";
/// Largest payload of one notification (PostgreSQL refuses 8000 bytes and
/// more); longer serial lists are split over several notifications.
pub const NOTIFY_PAYLOAD_BYTES_MAX: usize = 7000;
/// How often the listener pings itself through PostgreSQL.
pub const LISTENER_PING_INTERVAL: Duration = Duration::from_millis(250);
/// Cached identity answers are used only while the listener has proven,
/// within this long, that it hears every change: a revocation through any
/// process is refused by every other within this bound (plus one lookup).
pub const IDENTITY_NOTICE_MAX: Duration = Duration::from_millis(750);
/// A listener that got none of its own pings back for this long is
/// replaced by a new session.
pub const LISTENER_DEAD_AFTER: Duration = Duration::from_secs(3);
/// Pause before a new listener session after one failed or ended.
pub const LISTENER_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Pings awaiting their echo that are remembered (older ones are
/// forgotten; they would be too old to count anyway).
pub const PINGS_PENDING_MAX: usize = 64;

const _: () = assert!(LISTENER_PING_INTERVAL.as_millis() * 2 < IDENTITY_NOTICE_MAX.as_millis());
const _: () = assert!(IDENTITY_NOTICE_MAX.as_millis() < LISTENER_DEAD_AFTER.as_millis());
const _: () = assert!(NOTIFY_PAYLOAD_BYTES_MAX < 8000);

/// Payload prefix of a list of changed certificate serials.
const SERIALS: &str = "serials";
/// Payload prefix of a listener's ping to itself.
const PING: &str = "ping";
/// SQLSTATE `lock_not_available` (`lock_timeout` ran out).
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// The advisory lock key of `cluster_id`'s promotions: the first 8 bytes
/// of a domain-separated blake3 hash (a collision only makes two
/// clusters' promotions wait for each other).
pub fn promotion_lock_key(cluster_id: &str) -> i64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"rap-controlplane promotion lock\0");
    hasher.update(cluster_id.as_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    i64::from_be_bytes(first)
}

/// A connection with the same settings as `pool`'s, outside the pool.
async fn dedicated_connection(pool: &PgPool) -> Result<PgConnection> {
    let options = pool.connect_options();
    tokio::time::timeout(
        COORDINATION_CONNECT_TIMEOUT,
        PgConnection::connect_with(&options),
    )
    .await
    .map_err(|_| Error::Database(sqlx::Error::PoolTimedOut))?
    .map_err(Error::from)
}

/// The promotion lock of one cluster, held by an open transaction on a
/// connection of its own (see the module docs).
#[derive(Debug)]
pub struct PromotionLock {
    conn: PgConnection,
    cluster_id: String,
}

/// Waits (at most [`PROMOTION_LOCK_WAIT`]) for `cluster_id`'s promotion
/// lock. Another promotion still running after the wait is
/// [`Error::FailedPrecondition`].
pub async fn lock_promotion(pool: &PgPool, cluster_id: &str) -> Result<PromotionLock> {
    let mut conn = dedicated_connection(pool).await?;
    sqlx::query("BEGIN").execute(&mut conn).await?;
    // The transaction stays open across the orders: a server-wide idle or
    // statement timeout must not end it (and with it the lock) half-way.
    sqlx::query(
        "SELECT set_config('idle_in_transaction_session_timeout', '0', true),
                set_config('statement_timeout', '0', true),
                set_config('lock_timeout', $1, true)",
    )
    .bind(format!("{}ms", PROMOTION_LOCK_WAIT.as_millis()))
    .execute(&mut conn)
    .await?;
    let started = Instant::now();
    let locked = sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(promotion_lock_key(cluster_id))
        .execute(&mut conn)
        .await;
    match locked {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
            return Err(Error::FailedPrecondition(format!(
                "another promotion of cluster {cluster_id} is still running after {} s: check \
                 `rapctl authority status {cluster_id}` and run again if the promotion is still needed",
                PROMOTION_LOCK_WAIT.as_secs()
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::debug!(cluster_id, waited_ms, "promotion lock taken");
    Ok(PromotionLock {
        conn,
        cluster_id: cluster_id.to_string(),
    })
}

impl PromotionLock {
    /// Proves that the lock is still held (its transaction still open):
    /// call it right before committing what the lock protects.
    pub async fn confirm(&mut self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&mut self.conn)
            .await
            .map(|_| ())
            .map_err(|e| {
                tracing::warn!(cluster_id = %self.cluster_id, error = %e, "promotion lock lost");
                Error::from(e)
            })
    }

    /// Ends the lock's transaction (and so the lock) and closes its
    /// connection. Dropping the lock ends it too, when the connection
    /// closes.
    pub async fn release(mut self) {
        if let Err(e) = sqlx::query("ROLLBACK").execute(&mut self.conn).await {
            tracing::warn!(cluster_id = %self.cluster_id, error = %e, "promotion lock: rollback failed; closing its connection");
        }
        let _ = self.conn.close().await;
    }
}

/// The payloads telling that `serials` changed: as few as fit
/// [`NOTIFY_PAYLOAD_BYTES_MAX`] each.
fn serial_payloads(serials: &[String]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::from(SERIALS);
    for serial in serials {
        if serial.is_empty()
            || serial.chars().any(char::is_whitespace)
            || SERIALS.len() + 1 + serial.len() > NOTIFY_PAYLOAD_BYTES_MAX
        {
            // Not a serial this format can carry: everything is dropped.
            return vec![String::new()];
        }
        if current.len() + 1 + serial.len() > NOTIFY_PAYLOAD_BYTES_MAX {
            payloads.push(std::mem::replace(&mut current, String::from(SERIALS)));
        }
        current.push(' ');
        current.push_str(serial);
    }
    if current.len() > SERIALS.len() {
        payloads.push(current);
    }
    payloads
}

/// Tells every control plane process, when the caller's transaction
/// commits, that the identities with these certificate serials changed
/// (revoked or rotated): their cached answers are dropped. Nothing is sent
/// if the transaction rolls back.
pub async fn notify_identities_changed(conn: &mut PgConnection, serials: &[String]) -> Result<()> {
    for payload in serial_payloads(serials) {
        notify(conn, IDENTITY_CHANNEL, &payload).await?;
    }
    Ok(())
}

/// Notifies `channel` with `payload` when the caller's transaction
/// commits (nothing if it rolls back).
pub async fn notify(conn: &mut PgConnection, channel: &str, payload: &str) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// A cache of identity answers that the listener keeps honest.
pub trait IdentityCache: Send + Sync + std::fmt::Debug + 'static {
    /// Drops the answers for these certificate serials.
    fn forget_serials(&self, serials: &[String]);
    /// Drops every answer.
    fn forget_everything(&self);
}

/// Whether a process's identity listener currently hears every change
/// (see the module docs). Cheap to clone; clones share the state.
#[derive(Clone, Debug, Default)]
pub struct IdentityWatch {
    confirmed: Arc<Mutex<Option<Instant>>>,
}

impl IdentityWatch {
    /// True while cached identity answers may be used: the listener's
    /// latest echoed ping was sent less than [`IDENTITY_NOTICE_MAX`] ago.
    pub fn is_current(&self) -> bool {
        self.confirmed_at()
            .is_some_and(|sent| sent.elapsed() < IDENTITY_NOTICE_MAX)
    }

    fn confirmed_at(&self) -> Option<Instant> {
        *self
            .confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn confirm(&self, sent: Instant) {
        let mut confirmed = self
            .confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if confirmed.is_none_or(|at| at < sent) {
            *confirmed = Some(sent);
        }
    }

    fn lose(&self) {
        *self
            .confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// What one notification payload means.
#[derive(Debug, PartialEq, Eq)]
enum Notice<'a> {
    Serials(Vec<String>),
    Ping {
        instance: &'a str,
        seq: u64,
    },
    /// Unknown or malformed: everything is dropped.
    Everything,
}

fn parse_notice(payload: &str) -> Notice<'_> {
    let mut words = payload.split_whitespace();
    match words.next() {
        Some(SERIALS) => {
            let serials: Vec<String> = words.map(str::to_string).collect();
            if serials.is_empty() {
                Notice::Everything
            } else {
                Notice::Serials(serials)
            }
        }
        Some(PING) => match (
            words.next(),
            words.next().map(str::parse::<u64>),
            words.next(),
        ) {
            (Some(instance), Some(Ok(seq)), None) => Notice::Ping { instance, seq },
            _ => Notice::Everything,
        },
        _ => Notice::Everything,
    }
}

/// Pings of this session awaiting their echo: (sequence number, sent at).
type Pending = Mutex<VecDeque<(u64, Instant)>>;

/// Starts the identity listener of this process (see the module docs);
/// it runs until `stop` turns true (or its sender is dropped). Until its
/// first ping comes back, `watch` is not current.
pub fn spawn_identity_listener<C: IdentityCache>(
    pool: PgPool,
    cache: C,
    watch: IdentityWatch,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run_listener(pool, cache, watch, stop))
}

async fn run_listener<C: IdentityCache>(
    pool: PgPool,
    cache: C,
    watch: IdentityWatch,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let instance = match crate::secret::random_id() {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "identity listener: no random id; cached identity answers stay unused");
            return;
        }
    };
    let mut seq: u64 = 0;
    let mut healthy = true;
    loop {
        watch.lose();
        cache.forget_everything();
        if *stop.borrow() {
            return;
        }
        match listen(&pool).await {
            Ok(listener) => {
                // Whatever was cached before this session may have missed
                // a change sent while nobody listened.
                cache.forget_everything();
                if !healthy {
                    tracing::info!("identity listener back: cached identity answers in use again");
                }
                let ended = session(
                    &pool, listener, &cache, &watch, &mut stop, &instance, &mut seq,
                )
                .await;
                match ended {
                    None => {
                        watch.lose();
                        cache.forget_everything();
                        return;
                    }
                    Some(reason) => {
                        tracing::warn!(
                            reason = %reason,
                            "identity listener lost; identity checks ask PostgreSQL until it is back"
                        );
                        healthy = false;
                    }
                }
            }
            Err(e) => {
                if healthy {
                    tracing::warn!(error = %e, "identity listener cannot listen; identity checks ask PostgreSQL until it can");
                } else {
                    tracing::debug!(error = %e, "identity listener still cannot listen");
                }
                healthy = false;
            }
        }
        watch.lose();
        cache.forget_everything();
        tokio::select! {
            _ = tokio::time::sleep(LISTENER_RETRY_PAUSE) => {}
            _ = stop.changed() => {}
        }
    }
}

/// A listener on [`IDENTITY_CHANNEL`] over a one-connection pool of its
/// own (never reconnected behind our back: a lost connection ends the
/// session).
async fn listen(pool: &PgPool) -> Result<PgListener> {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(COORDINATION_CONNECT_TIMEOUT)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut listener = PgListener::connect_with(&own).await?;
    listener.ignore_pool_close_event(true);
    listener.eager_reconnect(false);
    listener.listen(IDENTITY_CHANNEL).await?;
    Ok(listener)
}

/// One listener session: applies notifications and pings itself until the
/// connection is lost or goes silent (`Some(reason)`) or `stop` (`None`).
async fn session<C: IdentityCache>(
    pool: &PgPool,
    listener: PgListener,
    cache: &C,
    watch: &IdentityWatch,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    instance: &str,
    seq: &mut u64,
) -> Option<String> {
    let pending: Pending = Mutex::new(VecDeque::new());
    let receiving = receive(listener, cache, watch, &pending, instance);
    tokio::pin!(receiving);
    let started = Instant::now();
    let mut ticks = tokio::time::interval(LISTENER_PING_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            reason = &mut receiving => return Some(reason),
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return None;
                }
            }
            _ = ticks.tick() => {
                let last = watch.confirmed_at().filter(|at| *at >= started).unwrap_or(started);
                if last.elapsed() > LISTENER_DEAD_AFTER {
                    return Some(format!(
                        "no ping came back for {} ms",
                        last.elapsed().as_millis()
                    ));
                }
                *seq = seq.wrapping_add(1);
                let sent = Instant::now();
                {
                    let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
                    if pending.len() >= PINGS_PENDING_MAX {
                        pending.pop_front();
                    }
                    pending.push_back((*seq, sent));
                }
                let payload = format!("{PING} {instance} {seq}");
                let notify = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(IDENTITY_CHANNEL)
                    .bind(&payload)
                    .execute(pool);
                match tokio::time::timeout(LISTENER_PING_INTERVAL, notify).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "identity listener: ping not sent"),
                    Err(_) => tracing::debug!("identity listener: ping not sent in time"),
                }
            }
        }
    }
}

/// Applies notifications until the connection fails; returns why.
async fn receive<C: IdentityCache>(
    mut listener: PgListener,
    cache: &C,
    watch: &IdentityWatch,
    pending: &Pending,
    instance: &str,
) -> String {
    loop {
        let notification = match listener.try_recv().await {
            Ok(Some(notification)) => notification,
            Ok(None) => return "connection lost".to_string(),
            Err(e) => return e.to_string(),
        };
        match parse_notice(notification.payload()) {
            Notice::Serials(serials) => {
                tracing::debug!(count = serials.len(), "identity change notified");
                cache.forget_serials(&serials);
            }
            Notice::Ping {
                instance: from,
                seq,
            } => {
                if from != instance {
                    continue;
                }
                let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
                let sent = pending.iter().find(|(s, _)| *s == seq).map(|(_, at)| *at);
                pending.retain(|(s, _)| *s > seq);
                drop(pending);
                if let Some(sent) = sent {
                    watch.confirm(sent);
                }
            }
            Notice::Everything => {
                tracing::debug!("unknown identity notification: every cached answer dropped");
                cache.forget_everything();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: serial lists are split below PostgreSQL's payload limit and
    // read back whole; anything malformed drops everything. Method: round
    // trip 1000 serials; odd payloads.
    #[test]
    fn payloads_round_trip_and_stay_small() {
        let serials: Vec<String> = (0..1000).map(|i| format!("{i:040x}")).collect();
        let payloads = serial_payloads(&serials);
        assert!(payloads.len() > 1);
        let mut back = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= NOTIFY_PAYLOAD_BYTES_MAX);
            match parse_notice(payload) {
                Notice::Serials(s) => back.extend(s),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(back, serials);
        assert!(serial_payloads(&[]).is_empty());
        assert_eq!(serial_payloads(&["a b".to_string()]), vec![String::new()]);
        assert_eq!(parse_notice(""), Notice::Everything);
        assert_eq!(parse_notice("serials"), Notice::Everything);
        assert_eq!(parse_notice("ping x"), Notice::Everything);
        assert_eq!(parse_notice("ping x 1 2"), Notice::Everything);
        assert_eq!(parse_notice("what"), Notice::Everything);
        assert_eq!(
            parse_notice("ping abc 7"),
            Notice::Ping {
                instance: "abc",
                seq: 7
            }
        );
    }

    // Goal: lock keys differ per cluster and are stable. Method: compare.
    #[test]
    fn promotion_lock_keys() {
        assert_eq!(promotion_lock_key("c1"), promotion_lock_key("c1"));
        assert_ne!(promotion_lock_key("c1"), promotion_lock_key("c2"));
    }

    // Goal: a watch is current only shortly after a confirmation, and
    // never before one or after it is lost. Method: confirm, lose.
    #[test]
    fn watch_freshness() {
        let watch = IdentityWatch::default();
        assert!(!watch.is_current());
        watch.confirm(Instant::now());
        assert!(watch.is_current());
        watch.lose();
        assert!(!watch.is_current());
        if let Some(old) = Instant::now().checked_sub(IDENTITY_NOTICE_MAX) {
            watch.confirm(old);
            assert!(!watch.is_current());
        }
    }
}
