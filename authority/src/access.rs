//! Who may call what: the one table of caller kind × RPC, and the one
//! function that applies it (docs/threat-model.md).
//!
//! A certificate from the cluster CA proves only that the CA issued it.
//! What its holder may call is decided here, from its kind
//! ([`IdentityKind`]) and, for storage nodes, from the receiver's group:
//!
//! * [`grants`] is the table: for every [`Rpc`] the caller kinds admitted
//!   and under which [`Condition`]. An RPC not in the table is refused.
//!   The two standard services every rap gRPC server runs, health and
//!   reflection ([`crate::probes`]), are rows too: health admits every
//!   certificate kind (a probe presents whichever certificate it has), and
//!   reflection the kinds that may call another RPC of the receiving
//!   server ([`Condition::UsesThisServer`], from [`GroupView::serves`]).
//! * [`decide`] applies it to a [`Caller`] against a [`GroupView`] (the
//!   receiving storage node's membership, revocations and cluster).
//! * [`AccessLayer`] runs [`decide`] on every request of a gRPC server
//!   before any handler sees it, and hands the admitted [`Caller`] to the
//!   handler in the request's extensions. One refinement: a Raft RPC of a
//!   storage node of this cluster that is not a member is refused only
//!   after the term check, so an old member still hears `STALE_TERM` (with
//!   the order proving the new term) and knows it is fenced. Storage nodes serve every
//!   service behind it; the control plane calls [`decide_at_control_plane`]
//!   for the certificate-authenticated RPCs and the health and reflection
//!   services it serves.
//!
//! **Invariant:** no request reaches a handler of a storage node unless
//! its caller's kind is admitted for that RPC, its certificate is of this
//! cluster and not revoked, and (for Raft RPCs and relayed writes) the
//! caller is a member of this node's group.

use crate::error::Error;
use rap_core::identity::{CertificateFacts, IdentityKind};
use rap_proto::ids::{ClusterId, NodeId};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::http;
use tracing::Instrument;

/// Metadata key marking a request a member relays to its leader (a
/// follower forwarding a write); a relayed request is never relayed again.
pub const FORWARDED_HEADER: &str = "x-rap-forwarded";

/// Every RPC a rap server serves (package `rap.v1`, and the standard
/// health and reflection services), by full gRPC path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// `RaftService/AppendEntries`.
    RaftAppendEntries,
    /// `RaftService/Vote`.
    RaftVote,
    /// `RaftService/InstallSnapshot`.
    RaftInstallSnapshot,
    /// `AuthorityService/AcquireFence`.
    AcquireFence,
    /// `AuthorityService/PublishShards`.
    PublishShards,
    /// `AuthorityService/ShardHeads`.
    ShardHeads,
    /// `AuthorityService/Status`.
    AuthorityStatus,
    /// `AuthorityService/Promote`.
    Promote,
    /// `AuthorityService/Rejoin`.
    Rejoin,
    /// `AuthorityService/Bootstrap`.
    Bootstrap,
    /// `AuthorityService/AddVoter`.
    AddVoter,
    /// `AuthorityService/RemoveVoter`.
    RemoveVoter,
    /// `AuthorityService/PrepareJoin`.
    PrepareJoin,
    /// `EnrollmentService/SubmitJoinRequest`.
    SubmitJoinRequest,
    /// `EnrollmentService/GetJoinStatus`.
    GetJoinStatus,
    /// `EnrollmentService/RenewCertificate`.
    RenewCertificate,
    /// `AgentService/Heartbeat`.
    Heartbeat,
    /// `ShardService/GetShard`.
    GetShard,
    /// `ShardService/WatchShards`.
    WatchShards,
    /// `ShardService/ListOwnScopes`.
    ListOwnScopes,
    /// `grpc.health.v1.Health/Check`.
    HealthCheck,
    /// `grpc.health.v1.Health/Watch`.
    HealthWatch,
    /// `grpc.reflection.v1.ServerReflection/ServerReflectionInfo`.
    Reflection,
    /// `grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo`
    /// (what grpcurl asks first).
    ReflectionV1Alpha,
}

impl Rpc {
    /// Every RPC, in table order.
    pub const ALL: [Rpc; 24] = [
        Rpc::RaftAppendEntries,
        Rpc::RaftVote,
        Rpc::RaftInstallSnapshot,
        Rpc::AcquireFence,
        Rpc::PublishShards,
        Rpc::ShardHeads,
        Rpc::AuthorityStatus,
        Rpc::Promote,
        Rpc::Rejoin,
        Rpc::Bootstrap,
        Rpc::AddVoter,
        Rpc::RemoveVoter,
        Rpc::PrepareJoin,
        Rpc::SubmitJoinRequest,
        Rpc::GetJoinStatus,
        Rpc::RenewCertificate,
        Rpc::Heartbeat,
        Rpc::GetShard,
        Rpc::WatchShards,
        Rpc::ListOwnScopes,
        Rpc::HealthCheck,
        Rpc::HealthWatch,
        Rpc::Reflection,
        Rpc::ReflectionV1Alpha,
    ];

    /// What a voter serves besides health and reflection (see
    /// [`GroupView::serves`]).
    pub const VOTER: [Rpc; 16] = [
        Rpc::RaftAppendEntries,
        Rpc::RaftVote,
        Rpc::RaftInstallSnapshot,
        Rpc::AcquireFence,
        Rpc::PublishShards,
        Rpc::ShardHeads,
        Rpc::AuthorityStatus,
        Rpc::Promote,
        Rpc::Rejoin,
        Rpc::Bootstrap,
        Rpc::AddVoter,
        Rpc::RemoveVoter,
        Rpc::PrepareJoin,
        Rpc::GetShard,
        Rpc::WatchShards,
        Rpc::ListOwnScopes,
    ];

    /// What a cache replica serves besides health and reflection.
    pub const CACHE: [Rpc; 3] = [Rpc::GetShard, Rpc::WatchShards, Rpc::ListOwnScopes];

    /// What the control plane serves under this table besides health and
    /// reflection. (`AdminService` authenticates its callers by bearer
    /// token: at the TLS layer they are anonymous, as the join requests
    /// here are.)
    pub const CONTROL_PLANE: [Rpc; 4] = [
        Rpc::SubmitJoinRequest,
        Rpc::GetJoinStatus,
        Rpc::RenewCertificate,
        Rpc::Heartbeat,
    ];

    /// The gRPC path, `/rap.v1.<Service>/<Method>` (`/<package>.<Service>/<Method>`
    /// for the standard services).
    pub fn path(self) -> &'static str {
        match self {
            Rpc::RaftAppendEntries => "/rap.v1.RaftService/AppendEntries",
            Rpc::RaftVote => "/rap.v1.RaftService/Vote",
            Rpc::RaftInstallSnapshot => "/rap.v1.RaftService/InstallSnapshot",
            Rpc::AcquireFence => "/rap.v1.AuthorityService/AcquireFence",
            Rpc::PublishShards => "/rap.v1.AuthorityService/PublishShards",
            Rpc::ShardHeads => "/rap.v1.AuthorityService/ShardHeads",
            Rpc::AuthorityStatus => "/rap.v1.AuthorityService/Status",
            Rpc::Promote => "/rap.v1.AuthorityService/Promote",
            Rpc::Rejoin => "/rap.v1.AuthorityService/Rejoin",
            Rpc::Bootstrap => "/rap.v1.AuthorityService/Bootstrap",
            Rpc::AddVoter => "/rap.v1.AuthorityService/AddVoter",
            Rpc::RemoveVoter => "/rap.v1.AuthorityService/RemoveVoter",
            Rpc::PrepareJoin => "/rap.v1.AuthorityService/PrepareJoin",
            Rpc::SubmitJoinRequest => "/rap.v1.EnrollmentService/SubmitJoinRequest",
            Rpc::GetJoinStatus => "/rap.v1.EnrollmentService/GetJoinStatus",
            Rpc::RenewCertificate => "/rap.v1.EnrollmentService/RenewCertificate",
            Rpc::Heartbeat => "/rap.v1.AgentService/Heartbeat",
            Rpc::GetShard => "/rap.v1.ShardService/GetShard",
            Rpc::WatchShards => "/rap.v1.ShardService/WatchShards",
            Rpc::ListOwnScopes => "/rap.v1.ShardService/ListOwnScopes",
            Rpc::HealthCheck => "/grpc.health.v1.Health/Check",
            Rpc::HealthWatch => "/grpc.health.v1.Health/Watch",
            Rpc::Reflection => "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            Rpc::ReflectionV1Alpha => {
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
            }
        }
    }

    /// The RPC at `path`, if it is one of ours.
    pub fn from_path(path: &str) -> Option<Rpc> {
        Rpc::ALL.into_iter().find(|rpc| rpc.path() == path)
    }

    /// The RPC at `path`, or the refusal of a path outside the table
    /// (`CALLER_NOT_ADMITTED`: nobody may call it).
    pub fn of_path(path: &str) -> Result<Rpc, Error> {
        Rpc::from_path(path).ok_or_else(|| Error::PermissionDenied {
            code: CALLER_NOT_ADMITTED,
            message: format!("{} is not an RPC of this server", shorten(path)),
        })
    }

    /// `Service/Method` for ours (`package.Service/Method` for the
    /// standard services), for logs, errors and docs.
    pub fn name(self) -> &'static str {
        let path = self.path();
        path.strip_prefix("/rap.v1.")
            .or_else(|| path.strip_prefix('/'))
            .unwrap_or(path)
    }

    /// Whether this is an RPC of the standard health or reflection
    /// services ([`crate::probes`]).
    pub fn is_probe(self) -> bool {
        matches!(
            self,
            Rpc::HealthCheck | Rpc::HealthWatch | Rpc::Reflection | Rpc::ReflectionV1Alpha
        )
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Under which condition a caller kind is admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Always (the handler may check more, e.g. that a node renews only
    /// its own certificate).
    Always,
    /// The caller is a member (voter or learner) of the receiver's group;
    /// for a receiver that holds no group yet, one of the members an
    /// authorized caller named to it (bootstrap voters, promotion
    /// survivors, `PrepareJoin`).
    Member,
    /// As [`Condition::Member`], and the request is marked as relayed
    /// ([`FORWARDED_HEADER`]): a follower forwarding a write it admitted
    /// to its leader.
    Relaying,
    /// The caller's kind may call another RPC the receiver serves
    /// ([`GroupView::serves`]): the generic services (reflection) answer
    /// exactly the callers of that server.
    UsesThisServer,
}

/// One admitted caller kind of an RPC. `kind: None` is a caller without a
/// client certificate (authenticated otherwise, e.g. by a join token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The caller kind; `None` for callers without a certificate.
    pub kind: Option<IdentityKind>,
    /// When it is admitted.
    pub condition: Condition,
}

const fn grant(kind: IdentityKind, condition: Condition) -> Grant {
    Grant {
        kind: Some(kind),
        condition,
    }
}

const OPERATORS: [Grant; 2] = [
    grant(IdentityKind::ControlPlane, Condition::Always),
    grant(IdentityKind::Operator, Condition::Always),
];
const OPERATORS_OR_RELAY: [Grant; 3] = [
    grant(IdentityKind::ControlPlane, Condition::Always),
    grant(IdentityKind::Operator, Condition::Always),
    grant(IdentityKind::Storage, Condition::Relaying),
];
const OPERATORS_OR_MEMBERS: [Grant; 3] = [
    grant(IdentityKind::ControlPlane, Condition::Always),
    grant(IdentityKind::Operator, Condition::Always),
    grant(IdentityKind::Storage, Condition::Member),
];
const MEMBERS: [Grant; 1] = [grant(IdentityKind::Storage, Condition::Member)];
const ANONYMOUS: [Grant; 1] = [Grant {
    kind: None,
    condition: Condition::Always,
}];
const NODES_AND_STORAGE: [Grant; 2] = [
    grant(IdentityKind::Node, Condition::Always),
    grant(IdentityKind::Storage, Condition::Always),
];
const NODES: [Grant; 1] = [grant(IdentityKind::Node, Condition::Always)];
const EVERY_CERTIFICATE_OR_USERS: [Grant; 5] = [
    Grant {
        kind: None,
        condition: Condition::UsesThisServer,
    },
    grant(IdentityKind::Storage, Condition::Always),
    grant(IdentityKind::Node, Condition::Always),
    grant(IdentityKind::ControlPlane, Condition::Always),
    grant(IdentityKind::Operator, Condition::Always),
];
const USERS_OF_THIS_SERVER: [Grant; 5] = [
    Grant {
        kind: None,
        condition: Condition::UsesThisServer,
    },
    grant(IdentityKind::Storage, Condition::UsesThisServer),
    grant(IdentityKind::Node, Condition::UsesThisServer),
    grant(IdentityKind::ControlPlane, Condition::UsesThisServer),
    grant(IdentityKind::Operator, Condition::UsesThisServer),
];

/// The table: who may call `rpc`. Exhaustive: a new RPC does not compile
/// until it has a row.
pub fn grants(rpc: Rpc) -> &'static [Grant] {
    match rpc {
        Rpc::RaftAppendEntries | Rpc::RaftVote | Rpc::RaftInstallSnapshot => &MEMBERS,
        Rpc::AcquireFence
        | Rpc::PublishShards
        | Rpc::ShardHeads
        | Rpc::Bootstrap
        | Rpc::AddVoter
        | Rpc::RemoveVoter => &OPERATORS_OR_RELAY,
        Rpc::AuthorityStatus => &OPERATORS_OR_MEMBERS,
        Rpc::Promote | Rpc::Rejoin | Rpc::PrepareJoin => &OPERATORS,
        // The join token and the proof of possession authenticate these.
        Rpc::SubmitJoinRequest | Rpc::GetJoinStatus => &ANONYMOUS,
        // The handler checks that the certificate is the caller's own
        // active one.
        Rpc::RenewCertificate => &NODES_AND_STORAGE,
        Rpc::Heartbeat => &NODES,
        // Shard reads: node agents, admitted to each scope by the
        // envelope's readers (`crate::shard::reader_of`), and storage nodes
        // filling a cache replica, admitted by the handler to the scopes
        // of their `cache/<id>` assignment and only by a voter
        // (`crate::shard`).
        Rpc::GetShard | Rpc::WatchShards => &NODES_AND_STORAGE,
        Rpc::ListOwnScopes => &NODES,
        // Health says SERVING or NOT_SERVING and nothing else: every
        // certificate of the cluster may ask (a probe presents whichever
        // it has: the node's own, an operator's, the control plane's), and
        // callers without one where the server has anonymous callers (the
        // control plane's join requests and bearer-token admin calls; a
        // storage node has none, its TLS asks every caller for a
        // certificate).
        Rpc::HealthCheck | Rpc::HealthWatch => &EVERY_CERTIFICATE_OR_USERS,
        // Reflection shows the schema of the services (no data, no
        // secrets) to the callers of that server only.
        Rpc::Reflection | Rpc::ReflectionV1Alpha => &USERS_OF_THIS_SERVER,
    }
}

/// Who is calling, as the transport proved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No client certificate.
    Anonymous,
    /// A client certificate that chains to a trusted CA (checked by TLS).
    Certified(CertificateFacts),
}

impl Caller {
    /// The caller of a connection whose client certificate chain is
    /// `certs` (leaf first), if any. A certificate that names no rap
    /// identity is an error: TLS accepted a chain we cannot place.
    pub fn from_certs(certs: Option<&[impl AsRef<[u8]>]>) -> Result<Caller, Error> {
        match certs.and_then(|certs| certs.first()) {
            None => Ok(Caller::Anonymous),
            Some(leaf) => Ok(Caller::Certified(CertificateFacts::from_der(
                leaf.as_ref(),
            )?)),
        }
    }

    /// The caller of `request`, from the client certificate of the TLS
    /// connection it came on (anonymous without TLS or without one).
    pub fn of_request<B>(request: &http::Request<B>) -> Result<Caller, Error> {
        let certs = request
            .extensions()
            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
            .and_then(|info| info.peer_certs());
        Caller::from_certs(certs.as_deref().map(Vec::as_slice))
    }

    /// The certificate's facts, when there is one.
    pub fn certificate(&self) -> Option<&CertificateFacts> {
        match self {
            Caller::Anonymous => None,
            Caller::Certified(facts) => Some(facts),
        }
    }

    fn kind(&self) -> Option<IdentityKind> {
        self.certificate().map(|facts| facts.identity.kind)
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Anonymous => f.write_str("an anonymous caller"),
            Caller::Certified(facts) => write!(f, "{}", facts.identity),
        }
    }
}

/// What the receiver knows that [`decide`] needs: its cluster, its group
/// and the revoked certificates.
pub trait GroupView: Send + Sync {
    /// The receiver's cluster.
    fn cluster_id(&self) -> &ClusterId;
    /// Whether storage node `id` is a member of the receiver's group (see
    /// [`Condition::Member`]).
    fn is_member(&self, id: &NodeId) -> bool;
    /// Whether the certificate with this serial (lowercase hex) is revoked.
    fn is_revoked(&self, serial_hex: &str) -> bool;
    /// The receiving node's id, for the RPC's tracing span (`None` for a
    /// receiver that is not a storage node).
    fn node_id(&self) -> Option<NodeId> {
        None
    }
    /// The RPCs the receiver serves besides health and reflection
    /// ([`Rpc::VOTER`], [`Rpc::CACHE`], [`Rpc::CONTROL_PLANE`]): a kind
    /// that may call one of them is admitted where the table says
    /// [`Condition::UsesThisServer`].
    fn serves(&self) -> &'static [Rpc];
}

/// A receiver without a group (the control plane): nobody is a member,
/// nothing is revoked here (the control plane checks revocation against
/// PostgreSQL), every cluster is its own.
#[derive(Debug)]
pub struct NoGroup(pub ClusterId);

impl GroupView for NoGroup {
    fn cluster_id(&self) -> &ClusterId {
        &self.0
    }
    fn is_member(&self, _id: &NodeId) -> bool {
        false
    }
    fn is_revoked(&self, _serial_hex: &str) -> bool {
        false
    }
    fn serves(&self) -> &'static [Rpc] {
        &Rpc::CONTROL_PLANE
    }
}

/// Whether a caller of `kind` (`None`: without a certificate) may call
/// one of `served` (its conditions aside): the test of
/// [`Condition::UsesThisServer`].
fn uses_server(kind: Option<IdentityKind>, served: &[Rpc]) -> bool {
    served.iter().any(|rpc| {
        grants(*rpc)
            .iter()
            .any(|g| g.kind == kind && g.condition != Condition::UsesThisServer)
    })
}

/// The check of a caller without a certificate: admitted where a grant
/// without a kind holds, else `UNAUTHENTICATED`.
fn decide_anonymous(rpc: Rpc, served: &[Rpc]) -> Result<(), Error> {
    let admitted = grants(rpc).iter().any(|g| {
        g.kind.is_none()
            && match g.condition {
                Condition::Always => true,
                Condition::UsesThisServer => uses_server(None, served),
                // Nobody without a certificate is a member.
                Condition::Member | Condition::Relaying => false,
            }
    });
    if admitted {
        return Ok(());
    }
    Err(Error::Unauthenticated(format!(
        "{rpc} needs a client certificate"
    )))
}

/// [`decide`] for the control plane, which holds no group and serves
/// every cluster: a certificate is checked against its own cluster (the
/// handlers check that it is the cluster the request is about, and
/// revocation against PostgreSQL, see [`NoGroup`]); a caller without one
/// against [`Rpc::CONTROL_PLANE`].
pub fn decide_at_control_plane(rpc: Rpc, caller: &Caller) -> Result<(), Error> {
    match caller.certificate() {
        Some(facts) => decide(
            rpc,
            caller,
            false,
            &NoGroup(facts.identity.cluster_id.clone()),
        ),
        None => decide_anonymous(rpc, &Rpc::CONTROL_PLANE),
    }
}

/// Decides whether `caller` may call `rpc` on a receiver that sees
/// `group`; `relayed` says whether the request carries
/// [`FORWARDED_HEADER`]. The refusals are typed: `UNAUTHENTICATED` without
/// a certificate where one is needed, `WRONG_CLUSTER`, `CERTIFICATE_REVOKED`,
/// `CALLER_NOT_ADMITTED` (kind not in the table), `NOT_A_MEMBER`.
pub fn decide(
    rpc: Rpc,
    caller: &Caller,
    relayed: bool,
    group: &dyn GroupView,
) -> Result<(), Error> {
    let table = grants(rpc);
    let Some(facts) = caller.certificate() else {
        return decide_anonymous(rpc, group.serves());
    };
    let identity = &facts.identity;
    if identity.cluster_id != *group.cluster_id() {
        return Err(Error::WrongCluster {
            expected: group.cluster_id().clone(),
            got: identity.cluster_id.to_string(),
        });
    }
    if group.is_revoked(&facts.serial_hex) {
        return Err(Error::PermissionDenied {
            code: CERTIFICATE_REVOKED,
            message: format!(
                "the certificate of {identity} (serial {}) is revoked",
                facts.serial_hex
            ),
        });
    }
    let admitted: Vec<&Grant> = table.iter().filter(|g| g.kind == caller.kind()).collect();
    if admitted.is_empty() {
        return Err(Error::PermissionDenied {
            code: CALLER_NOT_ADMITTED,
            message: format!(
                "{rpc} does not admit {} callers ({identity})",
                identity.kind
            ),
        });
    }
    let mut refusal = None;
    for g in admitted {
        match g.condition {
            Condition::Always => return Ok(()),
            Condition::UsesThisServer if uses_server(caller.kind(), group.serves()) => {
                return Ok(());
            }
            Condition::UsesThisServer => {
                refusal = Some((
                    CALLER_NOT_ADMITTED,
                    format!(
                        "{rpc} admits the callers of this server's other services, and they do not admit {} callers ({identity})",
                        identity.kind
                    ),
                ));
            }
            Condition::Member | Condition::Relaying if !group.is_member(&identity.node_id) => {
                refusal = Some((
                    NOT_A_MEMBER,
                    format!("{identity} is not a member of this node's group"),
                ));
            }
            Condition::Relaying if !relayed => {
                refusal = Some((
                    NOT_A_MEMBER,
                    format!("{rpc} admits a member only when it relays a request to its leader"),
                ));
            }
            Condition::Member | Condition::Relaying => return Ok(()),
        }
    }
    let (code, message) =
        refusal.unwrap_or_else(|| (NOT_A_MEMBER, format!("{identity} may not call {rpc}")));
    Err(Error::PermissionDenied { code, message })
}

// Refusal codes (owned by the registry in `rap_core::codes`): the
// caller's kind is not admitted for the RPC; a storage caller that is not
// a member of the group (or a member calling a write without relaying
// it); the caller's certificate is in `trust/revocations`.
pub use rap_core::codes::{CALLER_NOT_ADMITTED, CERTIFICATE_REVOKED, NOT_A_MEMBER};

/// Counts refusals (by code); the server's metrics implement it.
pub trait RefusalCounter: Send + Sync {
    /// One refusal with `code`.
    fn refused(&self, code: &str);
}

/// A tower layer that runs [`decide`] on every request before the
/// services see it. Requests for paths outside the table are refused.
/// Under plaintext (no TLS at all: development and the simulation) there
/// is no identity to check and every caller is admitted as
/// [`Caller::Anonymous`]; the storage node refuses plaintext on non-loopback
/// addresses without an explicit flag.
#[derive(Clone)]
pub struct AccessLayer {
    gate: Arc<Gate>,
}

struct Gate {
    group: Arc<dyn GroupView>,
    counter: Option<Arc<dyn RefusalCounter>>,
    tls: bool,
}

impl fmt::Debug for AccessLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLayer")
            .field("cluster_id", self.gate.group.cluster_id())
            .field("tls", &self.gate.tls)
            .finish_non_exhaustive()
    }
}

impl AccessLayer {
    /// A layer deciding against `group`; `tls` says whether the server
    /// runs mTLS (without it nobody is checked).
    pub fn new(
        group: Arc<dyn GroupView>,
        counter: Option<Arc<dyn RefusalCounter>>,
        tls: bool,
    ) -> Self {
        AccessLayer {
            gate: Arc::new(Gate {
                group,
                counter,
                tls,
            }),
        }
    }
}

impl<S> tower_layer::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> AccessService<S> {
        AccessService {
            inner,
            gate: self.gate.clone(),
        }
    }
}

/// The service [`AccessLayer`] wraps around a server's routes.
#[derive(Clone)]
pub struct AccessService<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> fmt::Debug for AccessService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessService").finish_non_exhaustive()
    }
}

impl Rpc {
    /// Whether this is a `RaftService` RPC.
    pub fn is_raft(self) -> bool {
        matches!(
            self,
            Rpc::RaftAppendEntries | Rpc::RaftVote | Rpc::RaftInstallSnapshot
        )
    }
}

impl Gate {
    fn admit<B>(&self, request: &http::Request<B>) -> Result<Admitted, Error> {
        let rpc = Rpc::of_path(request.uri().path())?;
        if !self.tls {
            return Ok(Admitted {
                rpc,
                caller: Caller::Anonymous,
                refusal_after_term_check: None,
            });
        }
        let caller = Caller::of_request(request)?;
        // TLS checked the validity at the handshake; a node agent's
        // connection outlives its short-lived certificate, so every call
        // checks it again (the agent reconnects with the renewed one).
        // Storage and operator connections are not re-checked per call:
        // the Raft channels keep the connection they made.
        if let Caller::Certified(facts) = &caller
            && facts.identity.kind == IdentityKind::Node
            && std::time::SystemTime::now() > facts.not_after
        {
            return Err(Error::Unauthenticated(format!(
                "the certificate of {} (serial {}) has expired; reconnect with the renewed one",
                facts.identity, facts.serial_hex
            )));
        }
        let relayed = request.headers().contains_key(FORWARDED_HEADER);
        match decide(rpc, &caller, relayed, self.group.as_ref()) {
            Ok(()) => Ok(Admitted {
                rpc,
                caller,
                refusal_after_term_check: None,
            }),
            // A storage node of this cluster that is not (or no longer) a
            // member still learns from the term check that it is behind:
            // an old-term member must hear STALE_TERM, with the order
            // proving the new term, to know it is fenced. Raft itself is
            // never reached.
            Err(Error::PermissionDenied {
                code: NOT_A_MEMBER,
                message,
            }) if rpc.is_raft() => Ok(Admitted {
                rpc,
                caller,
                refusal_after_term_check: Some(message),
            }),
            Err(e) => Err(e),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tonic::codegen::Service<http::Request<B>> for AccessService<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.gate.admit(&request) {
            Ok(admitted) => {
                // One span per admitted RPC: what, for whom, on which node.
                let span = tracing::info_span!(
                    "rpc",
                    rpc = ?admitted.rpc,
                    cluster_id = %self.gate.group.cluster_id(),
                    node_id = self.gate.group.node_id().as_ref().map(|id| id.as_str()).unwrap_or(""),
                    caller = %admitted.caller,
                );
                request.extensions_mut().insert(admitted);
                // The clone is ready only after poll_ready; swap so the
                // ready one serves this request (tower's usual dance).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { inner.call(request).await }.instrument(span))
            }
            Err(error) => {
                let code = error.code().to_string();
                if let Some(counter) = &self.gate.counter {
                    counter.refused(&code);
                }
                tracing::warn!(
                    cluster_id = %self.gate.group.cluster_id(),
                    path = %shorten(request.uri().path()),
                    code,
                    "call refused: {error}"
                );
                let response = tonic::Status::from(error).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

/// What [`AccessLayer`] admitted, in the request's extensions.
#[derive(Clone, Debug)]
pub struct Admitted {
    /// The RPC.
    pub rpc: Rpc,
    /// Who called.
    pub caller: Caller,
    /// For a Raft RPC of a storage node of this cluster that is not a
    /// member: the `NOT_A_MEMBER` refusal, to be answered after the term
    /// check (which tells an old-term sender it is fenced). Such a request
    /// never reaches Raft.
    pub refusal_after_term_check: Option<String>,
}

/// The admitted caller of a request served behind [`AccessLayer`].
pub fn admitted<T>(request: &tonic::Request<T>) -> Option<&Admitted> {
    request.extensions().get::<Admitted>()
}

/// A peer-supplied string cut to a loggable length (on a char boundary).
fn shorten(value: &str) -> String {
    let mut end = value.len().min(PATH_LOG_BYTES_MAX);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_string()
}

/// Longest request path written to a log or an error.
pub const PATH_LOG_BYTES_MAX: usize = 96;

/// The caller-kind table as a Markdown table (docs/threat-model.md holds
/// this text; a test keeps the two equal).
pub fn table_markdown() -> String {
    let mut out = String::from("| RPC | anonymous |");
    for kind in IdentityKind::ALL {
        out.push_str(&format!(" {kind} |"));
    }
    out.push_str("\n|---|---|");
    for _ in IdentityKind::ALL {
        out.push_str("---|");
    }
    out.push('\n');
    for rpc in Rpc::ALL {
        let table = grants(rpc);
        let cell = |kind: Option<IdentityKind>| {
            table
                .iter()
                .find(|g| g.kind == kind)
                .map(|g| match g.condition {
                    Condition::Always => "yes",
                    Condition::Member => "member",
                    Condition::Relaying => "member, relaying",
                    Condition::UsesThisServer => "if it uses the server",
                })
                .unwrap_or("no")
        };
        out.push_str(&format!("| `{}` | {} |", rpc.name(), cell(None)));
        for kind in IdentityKind::ALL {
            out.push_str(&format!(" {} |", cell(Some(kind))));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rap_core::identity::PeerIdentity;
    use std::collections::BTreeSet;
    use std::time::SystemTime;

    struct Group {
        cluster: ClusterId,
        members: BTreeSet<String>,
        revoked: BTreeSet<String>,
        serves: &'static [Rpc],
    }

    impl GroupView for Group {
        fn cluster_id(&self) -> &ClusterId {
            &self.cluster
        }
        fn is_member(&self, id: &NodeId) -> bool {
            self.members.contains(id.as_str())
        }
        fn is_revoked(&self, serial_hex: &str) -> bool {
            self.revoked.contains(serial_hex)
        }
        fn serves(&self) -> &'static [Rpc] {
            self.serves
        }
    }

    fn caller(identity: PeerIdentity, serial: &str) -> Caller {
        Caller::Certified(CertificateFacts {
            identity,
            serial_hex: serial.into(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH,
        })
    }

    fn cluster(id: &str) -> ClusterId {
        ClusterId::new(id).expect("cluster")
    }

    fn node(id: &str) -> NodeId {
        NodeId::new(id).expect("node")
    }

    fn group() -> Group {
        Group {
            cluster: cluster("c1"),
            members: ["s1", "s2"].into_iter().map(String::from).collect(),
            revoked: ["bad"].into_iter().map(String::from).collect(),
            serves: &Rpc::VOTER,
        }
    }

    // Goal: every RPC × caller of the table is decided as the table says,
    // for every kind, member or not, relayed or not; an agent is refused
    // every storage-node RPC; paths round-trip. Method: exhaustive loop.
    #[test]
    fn table_is_applied_exactly() {
        let g = group();
        let agent = caller(
            PeerIdentity::node(cluster("c1"), node("n-1")).expect("id"),
            "01",
        );
        let member = caller(
            PeerIdentity::storage(cluster("c1"), node("s1")).expect("id"),
            "02",
        );
        let stranger = caller(
            PeerIdentity::storage(cluster("c1"), node("s9")).expect("id"),
            "03",
        );
        let cp = caller(PeerIdentity::control_plane(cluster("c1")), "04");
        let op = caller(
            PeerIdentity::operator(cluster("c1"), node("admin")).expect("id"),
            "05",
        );
        for rpc in Rpc::ALL {
            assert_eq!(Rpc::from_path(rpc.path()), Some(rpc));
            let storage_rpc =
                rpc.path().contains("RaftService") || rpc.path().contains("AuthorityService");
            for relayed in [false, true] {
                let agent_ok = decide(rpc, &agent, relayed, &g).is_ok();
                assert_eq!(
                    agent_ok,
                    !storage_rpc
                        && matches!(
                            rpc,
                            Rpc::RenewCertificate
                                | Rpc::Heartbeat
                                | Rpc::GetShard
                                | Rpc::WatchShards
                                | Rpc::ListOwnScopes
                                | Rpc::HealthCheck
                                | Rpc::HealthWatch
                                | Rpc::Reflection
                                | Rpc::ReflectionV1Alpha
                        ),
                    "{rpc} agent"
                );
                let member_ok = decide(rpc, &member, relayed, &g).is_ok();
                let expect_member = grants(rpc).iter().any(|x| {
                    x.kind == Some(IdentityKind::Storage)
                        && (x.condition != Condition::Relaying || relayed)
                });
                assert_eq!(member_ok, expect_member, "{rpc} member relayed={relayed}");
                let stranger_ok = decide(rpc, &stranger, relayed, &g).is_ok();
                // A voter's callers include storage nodes that are not
                // members (cache replicas reading their placement).
                let expect_stranger = grants(rpc).iter().any(|x| {
                    x.kind == Some(IdentityKind::Storage)
                        && matches!(x.condition, Condition::Always | Condition::UsesThisServer)
                });
                assert_eq!(stranger_ok, expect_stranger, "{rpc} non-member");
                for operator in [&cp, &op] {
                    let ok = decide(rpc, operator, relayed, &g).is_ok();
                    let expect = grants(rpc).iter().any(|x| x.kind == operator.kind());
                    assert_eq!(ok, expect, "{rpc} {operator}");
                }
                let anonymous_ok = decide(rpc, &Caller::Anonymous, relayed, &g).is_ok();
                assert_eq!(
                    anonymous_ok,
                    matches!(rpc, Rpc::SubmitJoinRequest | Rpc::GetJoinStatus)
                );
            }
        }
        assert_eq!(Rpc::from_path("/rap.v1.AuthorityService/Nope"), None);
        assert_eq!(Rpc::from_path("/grpc.health.v1.Health/List"), None);
        assert_eq!(Rpc::HealthCheck.name(), "grpc.health.v1.Health/Check");
        assert_eq!(Rpc::AcquireFence.name(), "AuthorityService/AcquireFence");
    }

    // Goal: health admits every certificate kind on every server and
    // callers without one only where the server has such callers (the
    // control plane); reflection admits exactly the kinds that may call
    // another RPC of that server: everyone with a certificate on a voter,
    // node agents and storage nodes on a cache replica and on the control
    // plane (plus callers without a certificate there); the others are
    // CALLER_NOT_ADMITTED, no certificate UNAUTHENTICATED, and a revoked
    // certificate stays CERTIFICATE_REVOKED. The control plane's own
    // RPCs are decided as before. Method: each caller kind × probe RPC ×
    // server (voter, cache replica, control plane).
    #[test]
    fn probes_admit_the_callers_of_each_server() {
        let voter = group();
        let cache = Group {
            serves: &Rpc::CACHE,
            ..group()
        };
        let storage = caller(
            PeerIdentity::storage(cluster("c1"), node("s9")).expect("id"),
            "03",
        );
        let agent = caller(
            PeerIdentity::node(cluster("c1"), node("n-1")).expect("id"),
            "01",
        );
        let cp = caller(PeerIdentity::control_plane(cluster("c1")), "04");
        let op = caller(
            PeerIdentity::operator(cluster("c1"), node("admin")).expect("id"),
            "05",
        );
        let code = |result: Result<(), Error>| match result {
            Ok(()) => "ok".to_string(),
            Err(e) => e.code().to_string(),
        };
        for rpc in Rpc::ALL.into_iter().filter(|rpc| rpc.is_probe()) {
            let health = matches!(rpc, Rpc::HealthCheck | Rpc::HealthWatch);
            // (caller, voter, cache replica, control plane)
            let expected = [
                (&storage, "ok", "ok", "ok"),
                (&agent, "ok", "ok", "ok"),
                (
                    &cp,
                    "ok",
                    if health { "ok" } else { CALLER_NOT_ADMITTED },
                    if health { "ok" } else { CALLER_NOT_ADMITTED },
                ),
                (
                    &op,
                    "ok",
                    if health { "ok" } else { CALLER_NOT_ADMITTED },
                    if health { "ok" } else { CALLER_NOT_ADMITTED },
                ),
                (
                    &Caller::Anonymous,
                    "UNAUTHENTICATED",
                    "UNAUTHENTICATED",
                    "ok",
                ),
            ];
            for (who, at_voter, at_cache, at_control_plane) in expected {
                assert_eq!(
                    code(decide(rpc, who, false, &voter)),
                    at_voter,
                    "{rpc} {who} voter"
                );
                assert_eq!(
                    code(decide(rpc, who, false, &cache)),
                    at_cache,
                    "{rpc} {who} cache"
                );
                assert_eq!(
                    code(decide_at_control_plane(rpc, who)),
                    at_control_plane,
                    "{rpc} {who} control plane"
                );
            }
            let revoked = caller(
                PeerIdentity::operator(cluster("c1"), node("admin")).expect("id"),
                "bad",
            );
            assert_eq!(
                code(decide(rpc, &revoked, false, &voter)),
                CERTIFICATE_REVOKED
            );
        }
        assert_eq!(code(decide_at_control_plane(Rpc::Heartbeat, &agent)), "ok");
        assert_eq!(
            code(decide_at_control_plane(Rpc::Heartbeat, &storage)),
            CALLER_NOT_ADMITTED
        );
        assert_eq!(
            code(decide_at_control_plane(Rpc::Heartbeat, &Caller::Anonymous)),
            "UNAUTHENTICATED"
        );
        assert_eq!(
            code(decide_at_control_plane(
                Rpc::SubmitJoinRequest,
                &Caller::Anonymous
            )),
            "ok"
        );
    }

    // Goal: docs/threat-model.md shows the table the code applies. Method:
    // the rendered table must appear in it verbatim.
    #[test]
    fn threat_model_holds_the_table() {
        let doc = include_str!("../../docs/threat-model.md");
        let table = table_markdown();
        assert!(
            doc.contains(&table),
            "docs/threat-model.md must contain the caller-kind table exactly:\n{table}"
        );
    }

    // Goal: the refusals carry their codes: an agent on a Raft RPC is
    // CALLER_NOT_ADMITTED, a non-member NOT_A_MEMBER, a member writing
    // without relaying NOT_A_MEMBER, a revoked certificate
    // CERTIFICATE_REVOKED (even for an operator), another cluster
    // WRONG_CLUSTER, no certificate UNAUTHENTICATED. Method: one each.
    #[test]
    fn refusals_are_typed() {
        let g = group();
        let code = |rpc, c: &Caller, relayed| {
            decide(rpc, c, relayed, &g)
                .expect_err("refused")
                .code()
                .to_string()
        };
        let agent = caller(
            PeerIdentity::node(cluster("c1"), node("n-1")).expect("id"),
            "01",
        );
        assert_eq!(code(Rpc::RaftVote, &agent, false), CALLER_NOT_ADMITTED);
        let stranger = caller(
            PeerIdentity::storage(cluster("c1"), node("s9")).expect("id"),
            "03",
        );
        assert_eq!(code(Rpc::RaftVote, &stranger, false), NOT_A_MEMBER);
        let member = caller(
            PeerIdentity::storage(cluster("c1"), node("s1")).expect("id"),
            "02",
        );
        assert_eq!(code(Rpc::AcquireFence, &member, false), NOT_A_MEMBER);
        let revoked = caller(
            PeerIdentity::operator(cluster("c1"), node("admin")).expect("id"),
            "bad",
        );
        assert_eq!(
            code(Rpc::AuthorityStatus, &revoked, false),
            CERTIFICATE_REVOKED
        );
        let foreign = caller(PeerIdentity::control_plane(cluster("c2")), "04");
        assert_eq!(code(Rpc::AcquireFence, &foreign, false), "WRONG_CLUSTER");
        assert_eq!(
            code(Rpc::RaftVote, &Caller::Anonymous, false),
            "UNAUTHENTICATED"
        );
    }

    // Goal: the shard reads admit node agents, and storage nodes (cache
    // replicas filling themselves; the handler limits them to their
    // assignment) for GetShard and WatchShards only; the layer's cluster
    // and revocation checks apply to them as to every RPC: the control
    // plane and an operator are CALLER_NOT_ADMITTED, a storage node on
    // ListOwnScopes too, a revoked node certificate CERTIFICATE_REVOKED, a
    // node of another cluster WRONG_CLUSTER, no certificate
    // UNAUTHENTICATED. Method: each caller against each shard RPC.
    #[test]
    fn shard_reads_admit_nodes_and_caches() {
        let g = group();
        let node_caller = |cluster_id: &str, serial: &str| {
            caller(
                PeerIdentity::node(cluster(cluster_id), node("n-1")).expect("id"),
                serial,
            )
        };
        let storage = [
            caller(
                PeerIdentity::storage(cluster("c1"), node("s1")).expect("id"),
                "02",
            ),
            caller(
                PeerIdentity::storage(cluster("c1"), node("s9")).expect("id"),
                "03",
            ),
        ];
        let others = [
            caller(PeerIdentity::control_plane(cluster("c1")), "04"),
            caller(
                PeerIdentity::operator(cluster("c1"), node("admin")).expect("id"),
                "05",
            ),
        ];
        for rpc in [Rpc::GetShard, Rpc::WatchShards, Rpc::ListOwnScopes] {
            assert!(rpc.path().starts_with("/rap.v1.ShardService/"), "{rpc}");
            assert!(decide(rpc, &node_caller("c1", "01"), false, &g).is_ok());
            for other in &others {
                let refused = decide(rpc, other, false, &g).expect_err("refused");
                assert_eq!(refused.code(), CALLER_NOT_ADMITTED, "{rpc} {other}");
            }
            for cache in &storage {
                let decided = decide(rpc, cache, false, &g);
                if rpc == Rpc::ListOwnScopes {
                    let refused = decided.expect_err("refused");
                    assert_eq!(refused.code(), CALLER_NOT_ADMITTED, "{rpc} {cache}");
                } else {
                    assert!(decided.is_ok(), "{rpc} {cache}");
                }
            }
            let code = |c: &Caller| {
                decide(rpc, c, false, &g)
                    .expect_err("refused")
                    .code()
                    .to_string()
            };
            assert_eq!(code(&node_caller("c1", "bad")), CERTIFICATE_REVOKED);
            assert_eq!(code(&node_caller("c2", "01")), "WRONG_CLUSTER");
            assert_eq!(code(&Caller::Anonymous), "UNAUTHENTICATED");
        }
    }
}
