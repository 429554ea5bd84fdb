//! The client half: openraft's `RaftNetworkFactory` and `RaftNetwork` over
//! tonic.
//!
//! One lazily connected channel per peer, reused across openraft's
//! replication streams and election rounds; every channel has HTTP/2
//! keepalive (a partitioned connection is noticed and redialled),
//! `TCP_NODELAY` and a connect timeout. Each call carries the
//! [`TermGuard`] header and honours `RPCOption::hard_ttl()`. A call that
//! gets no Raft answer (transport failure, timeout, refusal by the remote
//! guard) is `RPCError::Unreachable`, so openraft backs off, and is
//! recorded in [`Reachability`]; a Raft answer is recorded as contact.

use super::codec::{self, SnapshotChunk};
use super::{
    CONNECT_TIMEOUT_DEFAULT, KEEPALIVE_INTERVAL_DEFAULT, KEEPALIVE_TIMEOUT_DEFAULT,
    NETWORK_DURATION_MAX, PEERS_MAX, Reachability, TermGuard, UNREACHABLE_BACKOFF_DEFAULT,
};
use crate::error::{Error, Result};
use crate::limits::RAFT_RPC_BYTES_MAX;
use crate::typ::{Member, RaftError, RaftNodeId, RpcError, TypeConfig};
use openraft::error::{InstallSnapshotError, PayloadTooLarge, RPCError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use rap_core::tls::pin::{ExpectedPeer, PeerTls, TlsDialer, dial};
use rap_proto::pb::RaftRequest;
use rap_proto::pb::raft_service_client::RaftServiceClient;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

/// Turns a configured [`Endpoint`] into a [`Channel`] for plaintext
/// transports: the simulation passes one that dials through turmoil
/// (`Endpoint::connect_with_connector_lazy`). Under mTLS the channel is
/// always dialled by the pinned TLS connector ([`PeerTls`]).
pub type Connector = Arc<dyn Fn(&Endpoint) -> Channel + Send + Sync>;

/// How Raft channels are dialled and kept alive.
#[derive(Clone)]
pub struct NetworkConfig {
    /// HTTP/2 keepalive PING interval (also sent while idle).
    pub keepalive_interval: Duration,
    /// How long a keepalive PING may go unanswered before the connection
    /// is dropped and redialled.
    pub keepalive_timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Pause openraft takes before retrying an unreachable peer.
    pub unreachable_backoff: Duration,
    /// mTLS towards storage nodes, every connection pinned to the peer
    /// it means to reach; `None` dials plaintext (development only).
    pub tls: Option<Arc<PeerTls>>,
    /// Under mTLS, the transport under TLS when it is not TCP (the
    /// simulator's network); `None` in production.
    pub tls_dialer: Option<TlsDialer>,
    /// Without mTLS, how a channel is dialled when no connector is given
    /// for it (the simulator's network); `None` dials TCP.
    pub plain_connector: Option<Connector>,
    /// Per storage node id, the address to dial instead of its member
    /// address (the connection is still pinned to that node's
    /// certificate). Fault-injection tests put a proxy of each link here
    /// (`rap-configstore serve --dial-via`); empty in production.
    pub dial_via: BTreeMap<String, String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            keepalive_interval: KEEPALIVE_INTERVAL_DEFAULT,
            keepalive_timeout: KEEPALIVE_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            unreachable_backoff: UNREACHABLE_BACKOFF_DEFAULT,
            tls: None,
            tls_dialer: None,
            plain_connector: None,
            dial_via: BTreeMap::new(),
        }
    }
}

impl fmt::Debug for NetworkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkConfig")
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("unreachable_backoff", &self.unreachable_backoff)
            .field("tls", &self.tls.is_some())
            .field("tls_dialer", &self.tls_dialer.is_some())
            .field("plain_connector", &self.plain_connector.is_some())
            .field("dial_via", &self.dial_via)
            .finish()
    }
}

impl NetworkConfig {
    /// Refuses a zero duration or one above [`NETWORK_DURATION_MAX`].
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("keepalive interval", self.keepalive_interval),
            ("keepalive timeout", self.keepalive_timeout),
            ("connect timeout", self.connect_timeout),
            ("unreachable backoff", self.unreachable_backoff),
        ] {
            if value.is_zero() || value > NETWORK_DURATION_MAX {
                return Err(Error::InvalidRequest(format!(
                    "{name} {value:?} is outside (0, {NETWORK_DURATION_MAX:?}]"
                )));
            }
        }
        Ok(())
    }
}

/// The endpoint of a peer's gRPC listener (`host:port`) with this config's
/// keepalive and timeouts. The scheme is always `http`: under mTLS the
/// TLS layer is the pinned connector's ([`channel`]).
pub fn endpoint(config: &NetworkConfig, address: &str) -> Result<Endpoint> {
    if address.contains("://") {
        return Err(Error::InvalidRequest(format!(
            "peer address {address:?} must be host:port, without a scheme"
        )));
    }
    Ok(Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| Error::InvalidRequest(format!("peer address {address:?}: {e}")))?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true))
}

/// A lazily connected channel to the storage node `expected` at
/// `address`: under mTLS through a connector that pins `expected` (chain
/// to the cluster CA, the address, cluster, kind and id); otherwise
/// through `connector` when given, else plain TCP.
pub fn channel(
    config: &NetworkConfig,
    address: &str,
    expected: &ExpectedPeer,
    connector: Option<&Connector>,
) -> Result<Channel> {
    let address = expected
        .node_id
        .as_ref()
        .and_then(|id| config.dial_via.get(id.as_str()))
        .map_or(address, String::as_str);
    let endpoint = endpoint(config, address)?;
    Ok(
        match (&config.tls, connector.or(config.plain_connector.as_ref())) {
            (Some(tls), _) => dial(
                endpoint,
                tls.connector(expected)?,
                config.tls_dialer.as_ref(),
            ),
            (None, Some(connector)) => connector(&endpoint),
            (None, None) => endpoint.connect_lazy(),
        },
    )
}

/// openraft's network factory for this node: hands out a [`Connection`]
/// per target, reusing one channel per peer.
pub struct NetworkFactory {
    config: NetworkConfig,
    guard: Arc<TermGuard>,
    reachability: Arc<Reachability>,
    connector: Option<Connector>,
    /// Per peer: the address dialled and its channel. At most
    /// [`PEERS_MAX`] entries.
    channels: BTreeMap<RaftNodeId, (String, Channel)>,
}

impl fmt::Debug for NetworkFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkFactory")
            .field("config", &self.config)
            .field("guard", &self.guard)
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl NetworkFactory {
    /// A factory dialling with `config`, stamping `guard`'s header on every
    /// call and recording outcomes in `reachability`.
    pub fn new(
        config: NetworkConfig,
        guard: Arc<TermGuard>,
        reachability: Arc<Reachability>,
    ) -> Result<Self> {
        config.validate()?;
        Ok(NetworkFactory {
            config,
            guard,
            reachability,
            connector: None,
            channels: BTreeMap::new(),
        })
    }

    /// Dials through `connector` instead of `Endpoint::connect_lazy`
    /// (plaintext transports only).
    pub fn with_connector(mut self, connector: Connector) -> Self {
        self.connector = Some(connector);
        self.channels.clear();
        self
    }

    /// The guard whose header every call carries.
    pub fn guard(&self) -> &Arc<TermGuard> {
        &self.guard
    }

    /// Where call outcomes are recorded.
    pub fn reachability(&self) -> &Arc<Reachability> {
        &self.reachability
    }

    /// A connection to `member` (raft id `target`), reusing its channel.
    /// Never fails: a bad address yields a connection whose every call is
    /// `Unreachable` with the reason.
    pub fn connect(&mut self, target: RaftNodeId, member: &Member) -> Connection {
        let client = self.channel(target, member).map(|channel| {
            RaftServiceClient::new(channel)
                .max_decoding_message_size(RAFT_RPC_BYTES_MAX)
                .max_encoding_message_size(RAFT_RPC_BYTES_MAX)
        });
        if let Err(e) = &client {
            tracing::error!(
                cluster_id = %self.guard.cluster_id(),
                node_id = %self.guard.node_id(),
                target = %member.node_id,
                error = %e,
                "cannot dial raft peer; fix its member address"
            );
        }
        Connection {
            target,
            member: member.clone(),
            client: client.map_err(|e| e.to_string()),
            guard: self.guard.clone(),
            reachability: self.reachability.clone(),
            backoff: self.config.unreachable_backoff,
        }
    }

    fn channel(&mut self, target: RaftNodeId, member: &Member) -> Result<Channel> {
        if let Some((address, channel)) = self.channels.get(&target)
            && *address == member.address
        {
            return Ok(channel.clone());
        }
        let channel = channel(
            &self.config,
            &member.address,
            &ExpectedPeer::storage_named(&member.node_id),
            self.connector.as_ref(),
        )?;
        if self.channels.len() >= PEERS_MAX && !self.channels.contains_key(&target) {
            self.channels.clear();
        }
        self.channels
            .insert(target, (member.address.clone(), channel.clone()));
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: RaftNodeId, node: &Member) -> Connection {
        self.connect(target, node)
    }
}

/// openraft's connection to one peer.
pub struct Connection {
    target: RaftNodeId,
    member: Member,
    /// The gRPC client, or why there is none (bad address or TLS config).
    client: std::result::Result<RaftServiceClient<Channel>, String>,
    guard: Arc<TermGuard>,
    reachability: Arc<Reachability>,
    backoff: Duration,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("target", &self.target)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl Rpc {
    fn as_str(self) -> &'static str {
        match self {
            Rpc::AppendEntries => "append_entries",
            Rpc::Vote => "vote",
            Rpc::InstallSnapshot => "install_snapshot",
        }
    }
}

/// Why a call got no Raft answer; the source of `RPCError::Unreachable`.
#[derive(Debug, thiserror::Error)]
enum CallFailure {
    #[error("no channel to {address}: {reason}")]
    NoChannel { address: String, reason: String },
    #[error("{rpc} got no answer within {after:?}")]
    Timeout { rpc: &'static str, after: Duration },
    #[error("{rpc} failed: {status}")]
    Transport {
        rpc: &'static str,
        status: tonic::Status,
    },
    #[error("{rpc} refused by the receiver ({code}): {message}")]
    Refused {
        rpc: &'static str,
        code: String,
        message: String,
    },
    #[error("{rpc}: {error}")]
    Local { rpc: &'static str, error: Error },
}

/// Share of `hard_ttl` kept back so this transport's deadline fires before
/// openraft's own timeout of the same length: the failure is then ours to
/// classify (`Unreachable`, backoff) and record.
const CALL_TIMEOUT_MARGIN_DIVISOR: u32 = 10;

/// Shortest per-call deadline, however small openraft's TTL.
const CALL_TIMEOUT_MIN: Duration = Duration::from_millis(1);

fn call_timeout(option: &RPCOption) -> Duration {
    let ttl = option.hard_ttl();
    (ttl - ttl / CALL_TIMEOUT_MARGIN_DIVISOR).max(CALL_TIMEOUT_MIN)
}

impl Connection {
    /// Sends one request and returns the reply payload, or why there is no
    /// Raft answer. Records the outcome in [`Reachability`].
    async fn call(
        &mut self,
        rpc: Rpc,
        payload: Vec<u8>,
        option: &RPCOption,
    ) -> std::result::Result<Vec<u8>, CallFailure> {
        let name = rpc.as_str();
        self.guard
            .ensure_not_fenced()
            .map_err(|error| CallFailure::Local { rpc: name, error })?;
        let client = match &mut self.client {
            Ok(client) => client,
            Err(reason) => {
                self.reachability.record_unreachable(self.target);
                return Err(CallFailure::NoChannel {
                    address: self.member.address.clone(),
                    reason: reason.clone(),
                });
            }
        };
        let timeout = call_timeout(option);
        let mut request = tonic::Request::new(RaftRequest {
            header: Some(self.guard.header()),
            payload,
        });
        request.set_timeout(timeout);
        let answer = tokio::time::timeout(timeout, async {
            match rpc {
                Rpc::AppendEntries => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::InstallSnapshot => client.install_snapshot(request).await,
            }
        })
        .await;
        let failure = match answer {
            Ok(Ok(response)) => {
                self.reachability.record_success(self.target);
                return Ok(response.into_inner().payload);
            }
            Err(_elapsed) => CallFailure::Timeout {
                rpc: name,
                after: timeout,
            },
            Ok(Err(status)) => match self.guard.observe_refusal(&status) {
                Some(code) => CallFailure::Refused {
                    rpc: name,
                    code,
                    message: status.message().to_string(),
                },
                None => CallFailure::Transport { rpc: name, status },
            },
        };
        match &failure {
            // No connection (refused, reset): the peer is gone, not slow.
            // Only the transport's own errors carry a source; a status the
            // peer sent (even UNAVAILABLE) is an answer from a live node.
            CallFailure::Transport { status, .. }
                if status.code() == tonic::Code::Unavailable
                    && std::error::Error::source(status).is_some() =>
            {
                self.reachability.record_unreachable(self.target);
            }
            _ => self.reachability.record_failure(self.target),
        }
        Err(failure)
    }

    /// Encodes, calls, decodes; a remote Raft error becomes `RemoteError`.
    async fn round_trip<Resp, E>(
        &mut self,
        rpc: Rpc,
        payload: Vec<u8>,
        option: &RPCOption,
    ) -> std::result::Result<Resp, RpcError<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let span = tracing::debug_span!(
            "raft_rpc_out",
            rpc = rpc.as_str(),
            cluster_id = %self.guard.cluster_id(),
            node_id = %self.guard.node_id(),
            target = %self.member.node_id,
        );
        async {
            let reply = self.call(rpc, payload, option).await.map_err(|failure| {
                tracing::debug!(error = %failure, "raft rpc got no answer");
                RPCError::Unreachable(Unreachable::new(&failure))
            })?;
            let reply: std::result::Result<Resp, RaftError<E>> =
                codec::decode("raft reply", &reply).map_err(|error| {
                    let failure = CallFailure::Local {
                        rpc: rpc.as_str(),
                        error,
                    };
                    tracing::warn!(error = %failure, "undecodable raft reply");
                    RPCError::Unreachable(Unreachable::new(&failure))
                })?;
            reply.map_err(|e| {
                RPCError::RemoteError(RemoteError::new_with_node(
                    self.target,
                    self.member.clone(),
                    e,
                ))
            })
        }
        .instrument(span)
        .await
    }

    fn local_failure<E: std::error::Error>(rpc: Rpc, error: Error) -> RpcError<E> {
        let failure = CallFailure::Local {
            rpc: rpc.as_str(),
            error,
        };
        tracing::warn!(error = %failure, "raft request not sent");
        RPCError::Unreachable(Unreachable::new(&failure))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: openraft::raft::AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> std::result::Result<AppendEntriesResponse<RaftNodeId>, RpcError> {
        let entries = rpc.entries.len();
        let payload = match codec::encode("append entries", &rpc) {
            Ok(payload) => payload,
            // Ask openraft to split the batch; a single entry always fits
            // (PUBLISH_BYTES_MAX < RAFT_RPC_BYTES_MAX).
            Err(Error::Oversize { .. }) if entries > 1 => {
                let hint = u64::try_from(entries / 2).unwrap_or(1).max(1);
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(hint),
                ));
            }
            Err(error) => return Err(Self::local_failure(Rpc::AppendEntries, error)),
        };
        self.round_trip(Rpc::AppendEntries, payload, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> std::result::Result<InstallSnapshotResponse<RaftNodeId>, RpcError<InstallSnapshotError>>
    {
        let payload = codec::encode("snapshot chunk", &SnapshotChunk::from(rpc))
            .map_err(|error| Self::local_failure(Rpc::InstallSnapshot, error))?;
        self.round_trip(Rpc::InstallSnapshot, payload, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftNodeId>,
        option: RPCOption,
    ) -> std::result::Result<VoteResponse<RaftNodeId>, RpcError> {
        let payload =
            codec::encode("vote", &rpc).map_err(|error| Self::local_failure(Rpc::Vote, error))?;
        self.round_trip(Rpc::Vote, payload, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the per-call deadline stays inside openraft's TTL and never
    // reaches zero. Method: a normal and a tiny TTL.
    #[test]
    fn call_timeout_inside_ttl() {
        let normal = call_timeout(&RPCOption::new(Duration::from_millis(100)));
        assert!(normal < Duration::from_millis(100) && normal >= Duration::from_millis(80));
        assert_eq!(
            call_timeout(&RPCOption::new(Duration::ZERO)),
            CALL_TIMEOUT_MIN
        );
    }

    // Goal: endpoints refuse a scheme in the address and bad durations;
    // they are always http (TLS is the pinned connector's). Method: build
    // a few.
    #[test]
    fn endpoint_rules() {
        let config = NetworkConfig::default();
        config.validate().expect("defaults are valid");
        let plain = endpoint(&config, "127.0.0.1:7001").expect("endpoint");
        assert_eq!(plain.uri().scheme_str(), Some("http"));
        assert!(endpoint(&config, "http://127.0.0.1:7001").is_err());
        let zero = NetworkConfig {
            keepalive_interval: Duration::ZERO,
            ..NetworkConfig::default()
        };
        assert!(zero.validate().is_err());
    }
}
