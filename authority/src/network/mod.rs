//! Raft RPCs over tonic (`rap.v1.RaftService`), with cluster and authority
//! term checks on every call.
//!
//! * [`codec`]: openraft's requests and responses as named-field
//!   MessagePack in the `payload` bytes; replies carry
//!   `Result<Resp, RaftError>` so a remote Raft error comes back typed.
//! * [`guard`]: [`TermGuard`], shared by client and server: builds the
//!   `RaftRpcHeader` and refuses another cluster, a lower term (the sender
//!   is fenced) or a higher term (we are fenced only when its signed
//!   promotion order verifies; an unproven one is `UNPROVEN_TERM`).
//! * [`reachability`]: [`Reachability`], when each peer last answered and
//!   when a leader last reached us; the partition view and `Status` read it.
//! * [`client`]: [`NetworkFactory`], openraft's `RaftNetworkFactory`, one
//!   lazily connected channel per peer with HTTP/2 keepalive, pinned to
//!   that peer's storage identity under mTLS.
//! * [`server`]: [`RaftServer`], the `RaftService` implementation over a
//!   Raft handle (or any [`RaftHandler`]).
//!
//! **Invariant:** no Raft message reaches openraft unless its header names
//! our cluster and our authority term, and, under mTLS, its sender's
//! certificate is a storage identity of our cluster that is a member of
//! our group (the access layer) and names the node the header names.

pub mod client;
pub mod codec;
pub mod guard;
pub mod reachability;
pub mod server;

pub use client::{Connection, Connector, NetworkConfig, NetworkFactory, channel};
pub use guard::TermGuard;
pub use reachability::{Clock, ManualClock, PeerContact, Reachability, TokioClock};
pub use server::{PeerAuth, RaftHandler, RaftServer};

use std::time::Duration;

/// Default HTTP/2 keepalive interval of every Raft channel: a partitioned
/// connection is noticed within about two intervals and then redialled
/// (the simulation uses ~300 ms).
pub const KEEPALIVE_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);

/// Default wait for a keepalive PING acknowledgement before the
/// connection is declared dead.
pub const KEEPALIVE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);

/// Default TCP (and TLS handshake) connect timeout of a Raft channel.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);

/// Default pause before openraft retries a peer that was unreachable.
pub const UNREACHABLE_BACKOFF_DEFAULT: Duration = Duration::from_millis(500);

/// Longest accepted keepalive interval, keepalive timeout, connect timeout
/// or backoff: above a minute a partition heals unnoticed for too long.
pub const NETWORK_DURATION_MAX: Duration = Duration::from_secs(60);

/// Most peers one node keeps a channel and a reachability record for: the
/// voters plus a few learners during a membership change.
pub const PEERS_MAX: usize = 64;

const _: () = assert!(PEERS_MAX >= 2 * crate::limits::VOTERS_MAX);
const _: () = assert!(KEEPALIVE_INTERVAL_DEFAULT.as_nanos() <= NETWORK_DURATION_MAX.as_nanos());
const _: () = assert!(UNREACHABLE_BACKOFF_DEFAULT.as_nanos() <= NETWORK_DURATION_MAX.as_nanos());
