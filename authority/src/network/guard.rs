//! The authority-term guard of the Raft transport.
//!
//! Every Raft RPC carries `{cluster_id, authority_term, from_node_id}`
//!. The receiver refuses another cluster and refuses a lower
//! term (the sender belongs to a fenced side). A *higher* term is believed
//! only together with its proof: the signed promotion order that created
//! it (cluster signing key, its own signature domain), carried in the
//! header (`term_proof`) or in a refusal's `ErrorDetail`. A proven higher
//! term means a promotion happened without this node, so this node is
//! **fenced** until an operator rejoins it: it refuses every Raft RPC and
//! sends none. An unproven higher term is refused with `UNPROVEN_TERM`,
//! counted, and fences nobody.
//!
//! **Invariant:** no node becomes fenced, and no term above its own is
//! believed, without a promotion order for that term that verifies against
//! the cluster's trust root.

use crate::error::{Error, Result};
use prost::Message;
use rap_proto::envelope::VerifiedTrustRoot;
use rap_proto::ids::{AuthorityTerm, ClusterId, NodeId};
use rap_proto::limits::ID_BYTES_MAX;
use rap_proto::pb::{PromoteRequest, RaftRpcHeader};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Largest term proof accepted (an encoded `PromoteRequest`: the order,
/// a key id and a signature).
pub const TERM_PROOF_BYTES_MAX: usize = rap_proto::orders::ORDER_BYTES_MAX + 256;

/// What proves the terms this guard knows about.
#[derive(Debug, Default)]
struct Proofs {
    /// The trust root promotion orders are verified against (the group's
    /// genesis root); `None` until the node holds one.
    trust: Option<VerifiedTrustRoot>,
    /// The order that created our term (`None` at term 1 or when not
    /// known yet).
    own: Option<Arc<[u8]>>,
    /// The order that proved `highest_foreign`.
    foreign: Option<Arc<[u8]>>,
}

/// This node's identity and authority term on the Raft transport, and the
/// highest proven term of another side seen so far. Shared (in an `Arc`)
/// by the [`NetworkFactory`](super::NetworkFactory) and the
/// [`RaftServer`](super::RaftServer) of one group, and carried across
/// promotion and rejoin.
#[derive(Debug)]
pub struct TermGuard {
    cluster_id: ClusterId,
    node_id: NodeId,
    /// Our authority term; only grows (promotion).
    term: AtomicU64,
    /// The highest proven authority term seen from another node that was
    /// higher than ours when seen; 0 when none. Only grows.
    highest_foreign: AtomicU64,
    proofs: RwLock<Proofs>,
    /// Higher terms refused for want of a valid proof.
    unproven: AtomicU64,
}

impl TermGuard {
    /// A guard for `node_id` in `cluster_id` at authority term `term`.
    pub fn new(cluster_id: ClusterId, node_id: NodeId, term: AuthorityTerm) -> Self {
        TermGuard {
            cluster_id,
            node_id,
            term: AtomicU64::new(term.0),
            highest_foreign: AtomicU64::new(0),
            proofs: RwLock::new(Proofs::default()),
            unproven: AtomicU64::new(0),
        }
    }

    /// The cluster this group serves.
    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }

    /// This node's RAP node id.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// Our authority term.
    pub fn term(&self) -> AuthorityTerm {
        AuthorityTerm(self.term.load(Ordering::SeqCst))
    }

    /// How many higher terms were refused for want of a valid proof.
    pub fn unproven_refused(&self) -> u64 {
        self.unproven.load(Ordering::Relaxed)
    }

    /// Sets the trust root promotion orders are verified against (the
    /// group's genesis root). Later calls replace it.
    pub fn set_trust_root(&self, root: VerifiedTrustRoot) {
        self.proofs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .trust = Some(root);
    }

    /// Whether a trust root is set.
    pub fn has_trust_root(&self) -> bool {
        self.read_proofs().trust.is_some()
    }

    /// Records `proof` (an encoded `PromoteRequest`) as the order that
    /// created our current term, after checking that it verifies and names
    /// that term. Returns whether it was recorded.
    pub fn set_own_proof(&self, proof: &[u8]) -> bool {
        match self.verify_proof(proof) {
            Ok(term) if term == self.term() => {
                self.proofs
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .own = Some(Arc::from(proof));
                true
            }
            Ok(term) => {
                tracing::warn!(
                    cluster_id = %self.cluster_id,
                    node_id = %self.node_id,
                    term = self.term().0,
                    order_term = term.0,
                    "term proof names another term; not kept"
                );
                false
            }
            Err(error) => {
                tracing::warn!(
                    cluster_id = %self.cluster_id,
                    node_id = %self.node_id,
                    %error,
                    "term proof does not verify; not kept"
                );
                false
            }
        }
    }

    /// Whether the order for our own term is known (always true at term
    /// 1, which needs none).
    pub fn has_own_proof(&self) -> bool {
        self.term().0 <= 1 || self.read_proofs().own.is_some()
    }

    fn read_proofs(&self) -> std::sync::RwLockReadGuard<'_, Proofs> {
        self.proofs.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves our authority term to `new_term` (promotion, rejoin or a
    /// re-seed applied from the log). The own proof is dropped when the
    /// term changes; [`TermGuard::set_own_proof`] sets the new one.
    ///
    /// # Panics
    /// If `new_term` is lower than the current term: a term never goes
    /// backwards, and a caller that tries has broken the fencing rule.
    pub fn set_term(&self, new_term: AuthorityTerm) {
        let previous = self.term.fetch_max(new_term.0, Ordering::SeqCst);
        assert!(
            previous <= new_term.0,
            "authority term must not go backwards: {previous} -> {}",
            new_term.0
        );
        if previous != new_term.0 {
            self.proofs
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .own = None;
        }
        tracing::info!(
            cluster_id = %self.cluster_id,
            node_id = %self.node_id,
            term = new_term.0,
            previous,
            "authority term set"
        );
    }

    /// The highest proven authority term seen on another node that was
    /// above ours when seen, if any.
    pub fn highest_foreign_term(&self) -> Option<AuthorityTerm> {
        match self.highest_foreign.load(Ordering::SeqCst) {
            0 => None,
            term => Some(AuthorityTerm(term)),
        }
    }

    /// The higher term that fences this node, if one has been proven.
    pub fn fenced_by(&self) -> Option<AuthorityTerm> {
        let ours = self.term();
        self.highest_foreign_term().filter(|theirs| *theirs > ours)
    }

    /// Whether a higher authority term than ours is proven: this node must
    /// neither serve nor send Raft RPCs.
    pub fn is_fenced(&self) -> bool {
        self.fenced_by().is_some()
    }

    /// Verifies `proof` (an encoded `PromoteRequest`) against the trust
    /// root and returns the term it creates. Refused: no trust root yet,
    /// an oversized or undecodable proof, a bad signature, another
    /// cluster.
    pub fn verify_proof(&self, proof: &[u8]) -> std::result::Result<AuthorityTerm, String> {
        if proof.is_empty() {
            return Err("no signed promotion order came with it".into());
        }
        if proof.len() > TERM_PROOF_BYTES_MAX {
            return Err(format!(
                "the proof is {} bytes, more than {TERM_PROOF_BYTES_MAX}",
                proof.len()
            ));
        }
        let request =
            PromoteRequest::decode(proof).map_err(|e| format!("the proof does not decode: {e}"))?;
        let proofs = self.read_proofs();
        let trust = proofs
            .trust
            .as_ref()
            .ok_or("this node holds no trust root to verify orders with")?;
        let order = rap_proto::orders::verify_promotion(&request, trust)
            .map_err(|e| format!("the promotion order does not verify: {e}"))?;
        if order.cluster_id != self.cluster_id.as_str() {
            return Err(format!(
                "the order is for cluster {:?}",
                shorten(&order.cluster_id)
            ));
        }
        Ok(AuthorityTerm(order.new_term))
    }

    /// Records a term above ours that `proof` proves; returns whether this
    /// node is now fenced by it. A fresh node (term 0: never bootstrapped,
    /// or wiped for a rejoin) is never fenced: it adopts its term from the
    /// log it is sent. The first time a higher term is proven it is logged
    /// at ERROR: an operator must act.
    fn observe_proven(&self, theirs: AuthorityTerm, proof: &[u8]) -> bool {
        let ours = self.term();
        if theirs <= ours || ours.0 == 0 {
            return false;
        }
        let previous = self.highest_foreign.fetch_max(theirs.0, Ordering::SeqCst);
        if previous < theirs.0 {
            self.proofs
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .foreign = Some(Arc::from(proof));
            tracing::error!(
                cluster_id = %self.cluster_id,
                node_id = %self.node_id,
                term = ours.0,
                higher_term = theirs.0,
                "a higher authority term exists (signed order verified): this node is fenced until an operator rejoins it"
            );
        }
        true
    }

    /// Takes note of a claimed term above ours: believed (and this node
    /// fenced) only when `proof` verifies and proves at least that term.
    /// Returns the refusal the caller should answer with.
    fn judge_higher(&self, theirs: AuthorityTerm, proof: &[u8]) -> Error {
        let ours = self.term();
        match self.verify_proof(proof) {
            Ok(proven) if proven >= theirs => {
                self.observe_proven(proven, proof);
                Error::Fenced {
                    ours,
                    theirs: proven,
                }
            }
            Ok(proven) => self.unproven(
                ours,
                theirs,
                format!("the order creates term {proven}, not {theirs}"),
            ),
            Err(reason) => self.unproven(ours, theirs, reason),
        }
    }

    fn unproven(&self, ours: AuthorityTerm, theirs: AuthorityTerm, reason: String) -> Error {
        self.unproven.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            cluster_id = %self.cluster_id,
            node_id = %self.node_id,
            term = ours.0,
            claimed = theirs.0,
            reason = %reason,
            "higher authority term without a valid signed order: refused, nobody fenced"
        );
        Error::UnprovenTerm {
            ours,
            theirs,
            reason,
        }
    }

    /// The header of every Raft RPC this node sends (with the order of our
    /// term when it is above 1).
    pub fn header(&self) -> RaftRpcHeader {
        let term = self.term().0;
        let term_proof = if term > 1 {
            self.read_proofs()
                .own
                .as_ref()
                .map(|proof| proof.to_vec())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        RaftRpcHeader {
            cluster_id: self.cluster_id.to_string(),
            authority_term: term,
            from_node_id: self.node_id.to_string(),
            term_proof,
        }
    }

    /// Refuses with [`Error::Fenced`] when this node is fenced; the client
    /// calls it before sending.
    pub fn ensure_not_fenced(&self) -> Result<()> {
        match self.fenced_by() {
            Some(theirs) => Err(Error::Fenced {
                ours: self.term(),
                theirs,
            }),
            None => Ok(()),
        }
    }

    /// Checks the header of an incoming Raft RPC, before anything else
    /// looks at the request: a missing or malformed header is
    /// [`Error::InvalidRequest`], another cluster [`Error::WrongCluster`],
    /// a lower term [`Error::StaleTerm`] (the sender is fenced); a higher
    /// term with a valid proof is recorded and refused with
    /// [`Error::Fenced`], without one it is [`Error::UnprovenTerm`] and
    /// changes nothing (a fresh node at term 0 takes its term from the
    /// sender's log instead); any request while this node is fenced is
    /// [`Error::Fenced`]. Returns the sender's node id.
    pub fn check(&self, header: Option<&RaftRpcHeader>) -> Result<NodeId> {
        let header =
            header.ok_or_else(|| Error::InvalidRequest("raft rpc without a header".into()))?;
        if header.cluster_id != self.cluster_id.as_str() {
            return Err(Error::WrongCluster {
                expected: self.cluster_id.clone(),
                got: shorten(&header.cluster_id),
            });
        }
        let from = NodeId::new(header.from_node_id.as_str()).map_err(|e| {
            Error::InvalidRequest(format!(
                "raft rpc header names no valid sender ({:?}): {e}",
                shorten(&header.from_node_id)
            ))
        })?;
        let ours = self.term();
        let theirs = AuthorityTerm(header.authority_term);
        if theirs < ours {
            return Err(Error::StaleTerm { ours, theirs });
        }
        if theirs > ours && ours.0 != 0 {
            return Err(self.judge_higher(theirs, &header.term_proof));
        }
        self.ensure_not_fenced()?;
        Ok(from)
    }

    /// [`Error::StaleTerm`] when `header` is of our cluster and below our
    /// term (its sender belongs to a fenced side), else `None`. Used to
    /// answer a storage node that is no longer a member.
    pub fn stale_sender(&self, header: Option<&RaftRpcHeader>) -> Option<Error> {
        let header = header?;
        let ours = self.term();
        let theirs = AuthorityTerm(header.authority_term);
        (header.cluster_id == self.cluster_id.as_str() && theirs < ours)
            .then_some(Error::StaleTerm { ours, theirs })
    }

    /// A refusal of this guard as a `tonic::Status` whose `ErrorDetail`
    /// carries the proof the refusal speaks of: our own order for
    /// `STALE_TERM` (the sender is behind us), the order that fenced us for
    /// `FENCED`.
    pub fn refusal_status(&self, error: Error) -> tonic::Status {
        let proof = match &error {
            Error::StaleTerm { .. } => self.read_proofs().own.clone(),
            Error::Fenced { .. } => self.read_proofs().foreign.clone(),
            _ => None,
        };
        let status = tonic::Status::from(error);
        let Some(proof) = proof else {
            return status;
        };
        let Some(mut detail) = rap_core::codes::error_detail(&status) else {
            return status;
        };
        detail.term_proof = proof.to_vec();
        tonic::Status::with_details(
            status.code(),
            status.message().to_string(),
            detail.encode_to_vec().into(),
        )
    }

    /// Reads a refusal of the remote guard out of a `tonic::Status` (its
    /// `ErrorDetail`) and records what it *proves*: `STALE_TERM` and
    /// `FENCED` fence this node only when the detail carries a promotion
    /// order that verifies and creates a term above ours. Returns the
    /// detail's code when the status is such a refusal (`WRONG_CLUSTER`
    /// and `UNPROVEN_TERM` included), `None` for any other status.
    pub fn observe_refusal(&self, status: &tonic::Status) -> Option<String> {
        let detail = rap_core::codes::error_detail(status)?;
        match detail.code.as_str() {
            "STALE_TERM" | "FENCED" => {
                if !detail.term_proof.is_empty() {
                    match self.verify_proof(&detail.term_proof) {
                        Ok(proven) => {
                            self.observe_proven(proven, &detail.term_proof);
                        }
                        Err(reason) => {
                            self.unproven.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                cluster_id = %self.cluster_id,
                                node_id = %self.node_id,
                                code = %detail.code,
                                reason = %reason,
                                "a peer's term refusal carries no valid order: not believed"
                            );
                        }
                    }
                }
            }
            "WRONG_CLUSTER" | "UNPROVEN_TERM" => {}
            _ => return None,
        }
        Some(detail.code)
    }
}

/// A peer-supplied string cut to a loggable length (on a char boundary).
fn shorten(value: &str) -> String {
    let mut end = value.len().min(ID_BYTES_MAX);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rap_proto::envelope::{SnapshotSigner, TrustRoot};
    use rap_proto::pb;
    use rap_proto::time::UnixMillis;

    struct Keys {
        signer: SnapshotSigner,
        root: VerifiedTrustRoot,
    }

    fn keys() -> Keys {
        let signer = SnapshotSigner::generate().expect("key");
        let root = TrustRoot::genesis(&cluster(), &[&signer], UnixMillis(1)).expect("root");
        Keys { signer, root }
    }

    fn cluster() -> ClusterId {
        ClusterId::new("c1").expect("cluster id")
    }

    fn guard(term: u64, keys: &Keys) -> TermGuard {
        let g = TermGuard::new(
            cluster(),
            NodeId::new("s1").expect("node id"),
            AuthorityTerm(term),
        );
        g.set_trust_root(keys.root.clone());
        g
    }

    /// A signed promotion order to `new_term`, encoded.
    fn order(signer: &SnapshotSigner, cluster: &str, new_term: u64) -> Vec<u8> {
        let order = pb::PromotionOrder {
            cluster_id: cluster.into(),
            current_term: new_term - 1,
            new_term,
            survivors: vec!["s9".into()],
            seed_node_id: "s9".into(),
            ..Default::default()
        };
        rap_proto::orders::sign_promotion(&order, signer).encode_to_vec()
    }

    fn header(cluster: &str, term: u64, from: &str, proof: &[u8]) -> RaftRpcHeader {
        RaftRpcHeader {
            cluster_id: cluster.into(),
            authority_term: term,
            from_node_id: from.into(),
            term_proof: proof.to_vec(),
        }
    }

    // Goal: a header of our cluster and term is accepted and names the
    // sender; our own header is such a header. Method: check both.
    #[test]
    fn accepts_same_cluster_and_term() {
        let k = keys();
        let g = guard(3, &k);
        assert_eq!(
            g.check(Some(&header("c1", 3, "s2", &[])))
                .expect("ok")
                .as_str(),
            "s2"
        );
        assert_eq!(g.check(Some(&g.header())).expect("ok").as_str(), "s1");
        assert!(!g.is_fenced());
    }

    // Goal (invariant 9): a higher term without a proof, with garbage,
    // with an order signed by a stranger's key, with another cluster's
    // order, or with an order for a lower term than claimed is refused
    // with UNPROVEN_TERM, counted, and fences nobody; the node keeps
    // serving its own term. Method: each in turn, then a same-term check.
    #[test]
    fn unproven_higher_terms_fence_nobody() {
        let k = keys();
        let g = guard(1, &k);
        let stranger = SnapshotSigner::generate().expect("key");
        let bad = [
            Vec::new(),
            b"abc".to_vec(),
            order(&stranger, "c1", 2),
            order(&k.signer, "c2", 2),
            order(&k.signer, "c1", 2),
        ];
        for (i, proof) in bad.iter().enumerate() {
            // The last one proves term 2, but the header claims 5.
            let err = g
                .check(Some(&header("c1", 5, "n-1", proof)))
                .expect_err("refused");
            assert_eq!(err.code(), "UNPROVEN_TERM", "case {i}: {err}");
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
        }
        assert!(!g.is_fenced());
        assert_eq!(g.highest_foreign_term(), None);
        assert_eq!(g.unproven_refused(), bad.len() as u64);
        assert!(g.check(Some(&header("c1", 1, "s2", &[]))).is_ok());
    }

    // Goal: a node without a trust root cannot verify, so it believes no
    // higher term at all. Method: a guard at term 1 without a root.
    #[test]
    fn no_trust_root_no_belief() {
        let k = keys();
        let g = TermGuard::new(cluster(), NodeId::new("s1").expect("id"), AuthorityTerm(1));
        let err = g
            .check(Some(&header("c1", 2, "s2", &order(&k.signer, "c1", 2))))
            .expect_err("refused");
        assert_eq!(err.code(), "UNPROVEN_TERM");
        assert!(!g.is_fenced());
    }

    // Goal: a fresh node (term 0, not yet bootstrapped or wiped for a
    // rejoin) accepts the RPCs of the group it is joining and is never
    // fenced, neither by a header nor by a remote refusal. Method: check a
    // term-1 header and observe a proven STALE_TERM refusal at term 0.
    #[test]
    fn fresh_node_adopts_instead_of_fencing() {
        let k = keys();
        let g = guard(0, &k);
        assert_eq!(
            g.check(Some(&header("c1", 1, "s2", &[])))
                .expect("ok")
                .as_str(),
            "s2"
        );
        let mut stale = tonic::Status::from(Error::StaleTerm {
            ours: AuthorityTerm(4),
            theirs: AuthorityTerm(0),
        });
        stale = with_proof(stale, &order(&k.signer, "c1", 4));
        g.observe_refusal(&stale);
        assert!(!g.is_fenced());
        g.set_term(AuthorityTerm(1));
        let proven = order(&k.signer, "c1", 2);
        assert!(g.check(Some(&header("c1", 2, "s2", &proven))).is_err());
        assert!(g.is_fenced());
    }

    fn with_proof(status: tonic::Status, proof: &[u8]) -> tonic::Status {
        let mut detail = rap_core::codes::error_detail(&status).expect("detail");
        detail.term_proof = proof.to_vec();
        tonic::Status::with_details(
            status.code(),
            status.message().to_string(),
            detail.encode_to_vec().into(),
        )
    }

    // Goal: another cluster is refused with WRONG_CLUSTER and records
    // nothing, even with a higher term. Method: check, inspect the guard.
    #[test]
    fn refuses_wrong_cluster() {
        let k = keys();
        let g = guard(3, &k);
        let err = g
            .check(Some(&header("c2", 9, "s2", &order(&k.signer, "c2", 9))))
            .expect_err("refused");
        assert!(
            matches!(&err, Error::WrongCluster { got, .. } if got == "c2"),
            "{err:?}"
        );
        assert_eq!(err.code(), "WRONG_CLUSTER");
        assert!(!g.is_fenced());
        assert_eq!(g.highest_foreign_term(), None);
    }

    // Goal: a lower term is STALE_TERM carrying our term and, when we have
    // one, our own proof; we stay unfenced. Method: check a term-2 header
    // at term 3; read the status detail.
    #[test]
    fn refuses_lower_term_with_our_proof() {
        let k = keys();
        let g = guard(3, &k);
        let own = order(&k.signer, "c1", 3);
        assert!(g.set_own_proof(&own));
        assert!(
            !g.set_own_proof(&order(&k.signer, "c1", 4)),
            "another term's order"
        );
        let err = g
            .check(Some(&header("c1", 2, "s2", &[])))
            .expect_err("refused");
        assert!(
            matches!(
                err,
                Error::StaleTerm {
                    ours: AuthorityTerm(3),
                    theirs: AuthorityTerm(2)
                }
            ),
            "{err:?}"
        );
        let detail = rap_core::codes::error_detail(&g.refusal_status(err)).expect("detail");
        assert_eq!(
            (detail.code.as_str(), detail.authority_term),
            ("STALE_TERM", 3)
        );
        assert_eq!(detail.term_proof, own);
        assert_eq!(g.header().term_proof, own, "our RPCs carry our order");
        assert!(!g.is_fenced());
    }

    // Goal: a proven higher term fences us: refused with FENCED, recorded,
    // and from then on even our own term's requests are refused and sends
    // are stopped; our FENCED refusals carry the proof; a later promotion
    // to that term lifts it. Method: sequence.
    #[test]
    fn proven_higher_term_fences() {
        let k = keys();
        let g = guard(3, &k);
        let proof = order(&k.signer, "c1", 5);
        let err = g
            .check(Some(&header("c1", 5, "s9", &proof)))
            .expect_err("refused");
        assert!(
            matches!(
                err,
                Error::Fenced {
                    ours: AuthorityTerm(3),
                    theirs: AuthorityTerm(5)
                }
            ),
            "{err:?}"
        );
        assert_eq!(g.fenced_by(), Some(AuthorityTerm(5)));
        let same_term = g
            .check(Some(&header("c1", 3, "s2", &[])))
            .expect_err("fenced");
        assert!(matches!(
            same_term,
            Error::Fenced {
                theirs: AuthorityTerm(5),
                ..
            }
        ));
        let detail = rap_core::codes::error_detail(&g.refusal_status(same_term)).expect("detail");
        assert_eq!(detail.term_proof, proof, "FENCED carries the order");
        assert!(g.ensure_not_fenced().is_err());
        g.set_term(AuthorityTerm(5));
        assert!(!g.is_fenced());
        assert!(g.check(Some(&header("c1", 5, "s9", &[]))).is_ok());
    }

    // Goal: a missing header or a malformed sender is INVALID_REQUEST.
    // Method: check None and a sender id that is not a DNS label.
    #[test]
    fn refuses_missing_or_malformed_header() {
        let k = keys();
        let g = guard(1, &k);
        assert!(matches!(g.check(None), Err(Error::InvalidRequest(_))));
        let bad = g.check(Some(&header("c1", 1, "Not A Node!", &[])));
        assert!(matches!(bad, Err(Error::InvalidRequest(_))), "{bad:?}");
    }

    // Goal: the client learns fencing from the remote's refusal only with
    // a valid order: STALE_TERM or FENCED without a proof, or with a
    // forged one, records nothing; with a valid order for a term above
    // ours it fences us at that term; other statuses are not refusals.
    // Method: feed statuses built from the crate Error.
    #[test]
    fn learns_from_remote_refusals_only_with_proof() {
        let k = keys();
        let g = guard(3, &k);
        let bare = tonic::Status::from(Error::StaleTerm {
            ours: AuthorityTerm(7),
            theirs: AuthorityTerm(3),
        });
        assert_eq!(g.observe_refusal(&bare).as_deref(), Some("STALE_TERM"));
        assert!(!g.is_fenced(), "a bare number proves nothing");

        let stranger = SnapshotSigner::generate().expect("key");
        let forged = with_proof(bare.clone(), &order(&stranger, "c1", 7));
        g.observe_refusal(&forged);
        assert!(!g.is_fenced(), "a forged order proves nothing");

        let fenced_bare = tonic::Status::from(Error::Fenced {
            ours: AuthorityTerm(3),
            theirs: AuthorityTerm(4),
        });
        assert_eq!(g.observe_refusal(&fenced_bare).as_deref(), Some("FENCED"));
        assert!(!g.is_fenced());

        let old = with_proof(fenced_bare.clone(), &order(&k.signer, "c1", 2));
        g.observe_refusal(&old);
        assert!(!g.is_fenced(), "an order below our term says nothing");

        let proven = with_proof(fenced_bare, &order(&k.signer, "c1", 4));
        g.observe_refusal(&proven);
        assert_eq!(g.fenced_by(), Some(AuthorityTerm(4)));

        let newer = with_proof(bare, &order(&k.signer, "c1", 7));
        g.observe_refusal(&newer);
        assert_eq!(g.fenced_by(), Some(AuthorityTerm(7)));

        assert_eq!(g.observe_refusal(&tonic::Status::unavailable("down")), None);
        assert_eq!(
            g.observe_refusal(&tonic::Status::from(Error::Storage("disk".into()))),
            None
        );
    }

    // Goal: a term never goes backwards. Method: set_term lower panics.
    #[test]
    #[should_panic(expected = "must not go backwards")]
    fn term_never_goes_backwards() {
        let k = keys();
        guard(3, &k).set_term(AuthorityTerm(2));
    }

    // Goal: a long foreign cluster id is cut for the error, on a char
    // boundary. Method: 100 two-byte chars.
    #[test]
    fn shortens_foreign_ids() {
        let long = "é".repeat(100);
        let short = shorten(&long);
        assert!(short.len() <= ID_BYTES_MAX);
        assert!(long.starts_with(&short));
    }
}
