//! Every size and count the control plane accepts, as named constants.

use std::time::Duration;

/// Longest free-text field (names, reasons, hostnames).
pub const TEXT_BYTES_MAX: usize = 200;
/// Longest reason an operator may give for a review or a revocation.
pub const REASON_BYTES_MAX: usize = 1024;
/// Capability bounds, shared with the agent that checks them first.
pub use rap_core::limits::{
    CAPABILITIES_MAX, CAPABILITY_DETAIL_BYTES_MAX, CAPABILITY_NAME_BYTES_MAX,
};
/// Most roles one join request may ask for.
pub const REQUESTED_ROLES_MAX: usize = 16;
/// Most free-form fact labels in one join request.
pub const FACT_LABELS_MAX: usize = 32;
/// Longest fact label key or value.
pub const FACT_LABEL_BYTES_MAX: usize = 256;
/// Largest encoded `NodeFacts` (all of it, labels included).
pub const FACTS_BYTES_MAX: usize = 8 * 1024;
/// Most services one heartbeat may report.
pub const HEARTBEAT_SERVICES_MAX: usize = 64;
/// Most accepted-version entries one heartbeat may report.
pub const HEARTBEAT_VERSIONS_MAX: usize = 256;
/// Longest error message sent back in a gRPC status (its header and its
/// `ErrorDetail`): messages may quote caller input (ids, names), and an
/// HTTP/2 header list is limited (16 KiB by default), so a long quote
/// would turn the answer into a protocol error.
pub const STATUS_MESSAGE_BYTES_MAX: usize = 1024;
/// Largest gRPC message the control plane decodes.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// Join token secret length in bytes (256 bits; the issue asks ≥ 128).
pub const JOIN_TOKEN_SECRET_BYTES: usize = 32;
/// Longest join token TTL an operator may ask for.
pub const JOIN_TOKEN_TTL_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default join token TTL.
pub const JOIN_TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(3600);
/// Largest `max_uses` of one join token (the schema checks the same).
pub const JOIN_TOKEN_USES_MAX: u32 = 1000;
/// Proof-of-possession nonce length bounds (the schema checks the same).
pub const PROOF_NONCE_BYTES_MIN: usize = 16;
/// See [`PROOF_NONCE_BYTES_MIN`].
pub const PROOF_NONCE_BYTES_MAX: usize = 64;
/// How far a proof's timestamp may be from the server clock.
pub const PROOF_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// How long a join request may wait for review before it expires.
pub const JOIN_REQUEST_PENDING_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// Most earlier identities of a key shown with a join request (its key
/// history): enough to see a revocation, bounded for a key reused on
/// many hosts.
pub const KEY_HISTORY_MAX: i64 = 32;

/// API token secret length in bytes.
pub const API_TOKEN_SECRET_BYTES: usize = 32;
/// TTL of a new API token when none is asked for (also the first owner's
/// token from `init`): a leaked token stops working by itself within a
/// quarter, and operators renew on a schedule they can keep.
pub const API_TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(90 * 24 * 3600);
/// How long a step-up (a TOTP code given to `StepUp`) lets a token do
/// high-risk actions without another code.
pub const STEP_UP_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Refused TOTP codes of one principal (confirmations and step-ups)
/// within [`TOTP_FAILURES_WINDOW`] after which further codes are refused
/// unread (6 digits: an attacker with a stolen token gets 5 guesses per
/// window, not a million).
pub const TOTP_FAILURES_MAX: i64 = 5;
/// See [`TOTP_FAILURES_MAX`].
pub const TOTP_FAILURES_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Longest API token TTL an owner may ask for: no token lives longer than
/// a year without someone deciding again.
pub const API_TOKEN_TTL_MAX: Duration = Duration::from_secs(365 * 24 * 3600);
/// `last_used_at` of an API token is written at most once per this
/// interval: authentication reads it and writes only when it is older, so
/// a busy token costs one write a minute, not one per call.
pub const API_TOKEN_LAST_USED_GRANULARITY: Duration = Duration::from_secs(60);

/// Anonymous refusals (bad join tokens, bad polls, calls without a valid
/// API token) written to the audit log per source (peer IPv4 address or
/// IPv6 /64, else the actor) per [`AUDIT_ANONYMOUS_WINDOW`]; the rest are
/// counted in metrics
/// and summed into the next row's `suppressed_before`. Anyone can cause
/// anonymous refusals, so they must not decide how fast the audit table
/// grows.
pub const AUDIT_ANONYMOUS_PER_SOURCE: u32 = 10;
/// The window of [`AUDIT_ANONYMOUS_PER_SOURCE`].
pub const AUDIT_ANONYMOUS_WINDOW: Duration = Duration::from_secs(60);
/// Sources whose anonymous refusals are tracked at once; beyond it (many
/// addresses at once) the untracked ones share one budget, so anonymous
/// audit rows stay below (this + 1) × the per-source budget per window
/// (~10,000 a minute even under a flood from a thousand addresses).
pub const AUDIT_ANONYMOUS_SOURCES_MAX: usize = 1024;

/// Largest page a list call returns.
pub const PAGE_SIZE_MAX: u32 = 500;
/// Page size when the caller gives none.
pub const PAGE_SIZE_DEFAULT: u32 = 100;

/// The certificate expiry report's window when the caller gives none.
pub const CERT_EXPIRY_WINDOW_DEFAULT: Duration = Duration::from_secs(30 * 24 * 3600);
/// The widest window the certificate expiry report takes (longer than
/// any certificate the platform issues, so "everything" fits in it).
pub const CERT_EXPIRY_WINDOW_MAX: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// Database connections of one control plane process.
pub const DB_POOL_CONNECTIONS: u32 = 16;
/// How long a fenced mutation waits for its fence before refusing.
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most heartbeats written in one batch (one statement per table).
pub const HEARTBEAT_BATCH_MAX: usize = 2000;
/// Longest a heartbeat waits in the batcher before it is written.
pub const HEARTBEAT_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Heartbeats queued at most; beyond it the agent is told to retry.
pub const HEARTBEAT_QUEUE_MAX: usize = 50_000;
/// Interval the control plane asks agents to heartbeat at.
pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);
/// How long the heartbeat log keeps entries.
pub const HEARTBEAT_RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// Heartbeats one node may send back to back (token bucket size): room for
/// an agent's retries after a reconnect, far below what would crowd the
/// shared queue.
pub const HEARTBEAT_NODE_BURST: u32 = 10;
/// One more heartbeat per node is allowed every this long (the bucket's
/// refill): 10× the interval agents are asked for, so a healthy agent
/// never meets it, and one node cannot take more than its share.
pub const HEARTBEAT_NODE_REFILL: Duration = Duration::from_secs(1);
/// Nodes the heartbeat limiter tracks at once (10× the 10,000-agent
/// target). Idle nodes (full buckets) are forgotten first; beyond it new
/// nodes are refused as rate limited instead of growing memory.
pub const HEARTBEAT_NODES_TRACKED_MAX: usize = 100_000;
/// Changes (health, degraded mode, agent version) of one node that go
/// into the heartbeat log per `heartbeats::HEARTBEAT_LOG_INTERVAL`: a node
/// flapping its health writes at most this many change rows (plus the
/// periodic sample), not one row per heartbeat. The latest-state table
/// still has every heartbeat.
pub const HEARTBEAT_LOG_CHANGES_MAX: u32 = 10;

const _: () = assert!(JOIN_TOKEN_SECRET_BYTES * 8 >= 128);
const _: () = assert!(PROOF_NONCE_BYTES_MIN <= PROOF_NONCE_BYTES_MAX);
const _: () = assert!(PAGE_SIZE_DEFAULT <= PAGE_SIZE_MAX);
const _: () = assert!(CERT_EXPIRY_WINDOW_DEFAULT.as_secs() <= CERT_EXPIRY_WINDOW_MAX.as_secs());
const _: () =
    assert!(rap_core::tls::CLUSTER_CA_VALIDITY.as_secs() <= CERT_EXPIRY_WINDOW_MAX.as_secs());
const _: () = assert!(HEARTBEAT_BATCH_MAX <= HEARTBEAT_QUEUE_MAX);
const _: () = assert!(HEARTBEAT_NODE_BURST >= 1 && HEARTBEAT_LOG_CHANGES_MAX >= 1);
const _: () = assert!((HEARTBEAT_NODE_BURST as usize) < HEARTBEAT_QUEUE_MAX);
const _: () = assert!(API_TOKEN_TTL_DEFAULT.as_secs() <= API_TOKEN_TTL_MAX.as_secs());
const _: () = assert!(AUDIT_ANONYMOUS_PER_SOURCE >= 1 && AUDIT_ANONYMOUS_SOURCES_MAX >= 1);

/// Most peers in one `peers/<node>` shard (same-group ones first, the
/// rest by rendezvous hash).
pub const SHARD_PEERS_MAX: usize = 32;
/// Most storage endpoints in one `node/<node>` shard (voters first).
pub const SHARD_STORAGE_ENDPOINTS_MAX: usize = 64;
/// Most scopes one publication compiles and publishes (a larger dirty set
/// is published over several rounds).
pub const PUBLISH_SCOPES_MAX: usize = 20_000;
/// Most scopes one `cache/<storage-node>` shard assigns its cache replica
/// (the readable scopes of every node it serves): about 3 MiB encoded with
/// its `serves` list, inside a shard body and a verifier's marks. A cache
/// whose assignment would be larger is refused (`OVERSIZE`): add caches
/// or lower the cluster's cache replicas.
pub const CACHE_SHARD_SCOPES_MAX: usize = 20_000;
/// Most cache replicas per node a cluster's policy may ask for, and the
/// default (placement's bounds; migration 0005 checks the same).
pub use rap_authority::placement::{CACHE_REPLICAS_DEFAULT, CACHE_REPLICAS_MAX};
/// Most cache replicas registered in one cluster (placement compares every
/// node with every cache).
pub const CLUSTER_CACHES_MAX: usize = 128;
/// Longest location label (region, zone, host) of a node or a cache
/// replica: ASCII letters, digits, '.', '_' and '-' (the schema checks
/// the same for node locations).
pub const LOCATION_LABEL_BYTES_MAX: usize = 63;
/// Longest storage node address, `host:port` (the schema checks the same).
pub const STORAGE_ADDRESS_BYTES_MAX: usize = 255;
/// Most scopes a placement report looks at (published scopes of one
/// cluster).
pub const PLACEMENT_SCOPES_MAX: usize = 200_000;
/// Most unreadable scopes a placement report names (it counts them all).
pub const PLACEMENT_UNREADABLE_LISTED_MAX: usize = 50;

const _: () = assert!(
    CACHE_SHARD_SCOPES_MAX
        * (rap_proto::limits::SCOPE_BYTES_MAX + 3 + rap_proto::limits::ID_BYTES_MAX + 3)
        + 4096
        < rap_proto::limits::BODY_BYTES_MAX
);
const _: () = assert!(CACHE_SHARD_SCOPES_MAX < rap_proto::limits::MARKED_SCOPES_MAX);
const _: () = assert!(CACHE_SHARD_SCOPES_MAX <= PUBLISH_SCOPES_MAX);
const _: () = assert!(LOCATION_LABEL_BYTES_MAX <= TEXT_BYTES_MAX);
/// How long a published shard is valid; the publisher re-signs it before
/// it expires ([`SHARD_REFRESH_BEFORE_EXPIRY`]).
pub const SHARD_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// A shard with less validity left than this is re-signed with a new
/// version by the publisher's freshness pass.
pub const SHARD_REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(2 * 24 * 3600);
/// How often the publisher looks for dirty scopes when no notification
/// woke it.
pub const PUBLISH_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often the publisher's freshness pass reads every head.
pub const SHARD_REFRESH_INTERVAL: Duration = Duration::from_secs(600);
