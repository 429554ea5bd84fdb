//! The authority-term guard of the Raft transport.
//!
//! Every Raft RPC carries `{cluster_id, authority_term, from_node_id}`
//! (DESIGN.md §3). The receiver refuses another cluster, refuses a lower
//! term (the sender belongs to a fenced side), and on a higher term records
//! it and refuses too: a higher term means a promotion happened without
//! this node, so this node is **fenced** until an operator rejoins it.
//! A fenced node refuses every Raft RPC and sends none.

use crate::error::{Error, Result};
use rap_proto::ids::{AuthorityTerm, ClusterId, NodeId};
use rap_proto::limits::ID_BYTES_MAX;
use rap_proto::pb::RaftRpcHeader;
use std::sync::atomic::{AtomicU64, Ordering};

/// This node's identity and authority term on the Raft transport, and the
/// highest term of another side seen so far. Shared (in an `Arc`) by the
/// [`NetworkFactory`](super::NetworkFactory) and the
/// [`RaftServer`](super::RaftServer) of one group.
#[derive(Debug)]
pub struct TermGuard {
    cluster_id: ClusterId,
    node_id: NodeId,
    /// Our authority term; only grows (promotion).
    term: AtomicU64,
    /// The highest authority term seen from another node that was higher
    /// than ours when seen; 0 when none. Only grows.
    highest_foreign: AtomicU64,
}

impl TermGuard {
    /// A guard for `node_id` in `cluster_id` at authority term `term`.
    pub fn new(cluster_id: ClusterId, node_id: NodeId, term: AuthorityTerm) -> Self {
        TermGuard {
            cluster_id,
            node_id,
            term: AtomicU64::new(term.0),
            highest_foreign: AtomicU64::new(0),
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

    /// Moves our authority term to `new_term` (promotion or re-seed).
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
        tracing::info!(
            cluster_id = %self.cluster_id,
            node_id = %self.node_id,
            term = new_term.0,
            previous,
            "authority term set"
        );
    }

    /// The highest authority term seen on another node that was above ours
    /// when seen, if any. It may be a lower bound: a peer that answers
    /// `FENCED` only proves that a term above its own exists.
    pub fn highest_foreign_term(&self) -> Option<AuthorityTerm> {
        match self.highest_foreign.load(Ordering::SeqCst) {
            0 => None,
            term => Some(AuthorityTerm(term)),
        }
    }

    /// The higher term that fences this node, if one has been seen.
    pub fn fenced_by(&self) -> Option<AuthorityTerm> {
        let ours = self.term();
        self.highest_foreign_term().filter(|theirs| *theirs > ours)
    }

    /// Whether a higher authority term than ours exists: this node must
    /// neither serve nor send Raft RPCs.
    pub fn is_fenced(&self) -> bool {
        self.fenced_by().is_some()
    }

    /// Records that authority term `theirs` exists elsewhere. Returns
    /// whether it is above ours (this node is fenced). The first time a
    /// higher term is seen it is logged at ERROR: an operator must act.
    ///
    /// A fresh node (term 0: never bootstrapped, or wiped for a rejoin) is
    /// never fenced: it adopts its term from the log it is sent.
    pub fn observe_term(&self, theirs: AuthorityTerm) -> bool {
        let ours = self.term();
        if theirs <= ours || ours.0 == 0 {
            return false;
        }
        let previous = self.highest_foreign.fetch_max(theirs.0, Ordering::SeqCst);
        if previous < theirs.0 {
            tracing::error!(
                cluster_id = %self.cluster_id,
                node_id = %self.node_id,
                term = ours.0,
                higher_term = theirs.0,
                "a higher authority term exists: this node is fenced until an operator rejoins it"
            );
        }
        true
    }

    /// The header of every Raft RPC this node sends.
    pub fn header(&self) -> RaftRpcHeader {
        RaftRpcHeader {
            cluster_id: self.cluster_id.to_string(),
            authority_term: self.term().0,
            from_node_id: self.node_id.to_string(),
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
    /// a lower term [`Error::StaleTerm`] (the sender is fenced), a higher
    /// term is recorded and refused with [`Error::Fenced`] (unless this node
    /// is fresh, at term 0, and takes its term from the sender's log), and so
    /// is any request while this node is fenced. Returns the sender's node id.
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
            self.observe_term(theirs);
            return Err(Error::Fenced { ours, theirs });
        }
        self.ensure_not_fenced()?;
        Ok(from)
    }

    /// Reads a refusal of the remote guard out of a `tonic::Status` (its
    /// `ErrorDetail`) and records what it proves: `STALE_TERM` carries the
    /// receiver's term, above ours; `FENCED` proves a term above the
    /// receiver's exists, so when the receiver is at our term or above, we
    /// are fenced too (recorded as receiver's term + 1, a lower bound).
    /// Returns the detail's code when the status is such a refusal
    /// (`WRONG_CLUSTER` included), `None` for any other status.
    pub fn observe_refusal(&self, status: &tonic::Status) -> Option<String> {
        let detail = crate::error::error_detail(status)?;
        let receiver_term = AuthorityTerm(detail.authority_term);
        match detail.code.as_str() {
            "STALE_TERM" => {
                self.observe_term(receiver_term);
            }
            "FENCED" => {
                self.observe_term(AuthorityTerm(receiver_term.0.saturating_add(1)));
            }
            "WRONG_CLUSTER" => {}
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

    fn guard(term: u64) -> TermGuard {
        TermGuard::new(
            ClusterId::new("c1").expect("cluster id"),
            NodeId::new("s1").expect("node id"),
            AuthorityTerm(term),
        )
    }

    fn header(cluster: &str, term: u64, from: &str) -> RaftRpcHeader {
        RaftRpcHeader {
            cluster_id: cluster.into(),
            authority_term: term,
            from_node_id: from.into(),
        }
    }

    // Goal: a header of our cluster and term is accepted and names the
    // sender; our own header is such a header. Method: check both.
    #[test]
    fn accepts_same_cluster_and_term() {
        let g = guard(3);
        assert_eq!(
            g.check(Some(&header("c1", 3, "s2"))).expect("ok").as_str(),
            "s2"
        );
        assert_eq!(g.check(Some(&g.header())).expect("ok").as_str(), "s1");
        assert!(!g.is_fenced());
    }

    // Goal: a fresh node (term 0, not yet bootstrapped or wiped for a
    // rejoin) accepts the RPCs of the group it is joining and is never
    // fenced, neither by a header nor by a remote refusal. Method: check a
    // term-1 header and observe a STALE_TERM refusal at term 0.
    #[test]
    fn fresh_node_adopts_instead_of_fencing() {
        let g = guard(0);
        assert_eq!(
            g.check(Some(&header("c1", 1, "s2"))).expect("ok").as_str(),
            "s2"
        );
        assert!(!g.observe_term(AuthorityTerm(4)));
        assert!(!g.is_fenced());
        g.set_term(AuthorityTerm(1));
        assert!(g.check(Some(&header("c1", 2, "s2"))).is_err());
        assert!(g.is_fenced());
    }

    // Goal: another cluster is refused with WRONG_CLUSTER and records
    // nothing, even with a higher term. Method: check, inspect the guard.
    #[test]
    fn refuses_wrong_cluster() {
        let g = guard(3);
        let err = g.check(Some(&header("c2", 9, "s2"))).expect_err("refused");
        assert!(
            matches!(&err, Error::WrongCluster { got, .. } if got == "c2"),
            "{err:?}"
        );
        assert_eq!(err.code(), "WRONG_CLUSTER");
        assert!(!g.is_fenced());
        assert_eq!(g.highest_foreign_term(), None);
    }

    // Goal: a lower term is STALE_TERM carrying our term; we stay unfenced.
    // Method: check a term-2 header at term 3; read the status detail.
    #[test]
    fn refuses_lower_term() {
        let g = guard(3);
        let err = g.check(Some(&header("c1", 2, "s2"))).expect_err("refused");
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
        let detail = crate::error::error_detail(&tonic::Status::from(err)).expect("detail");
        assert_eq!(
            (detail.code.as_str(), detail.authority_term),
            ("STALE_TERM", 3)
        );
        assert!(!g.is_fenced());
    }

    // Goal: a higher term fences us: refused with FENCED, recorded, and
    // from then on even our own term's requests are refused and sends are
    // stopped; a later promotion to that term lifts it. Method: sequence.
    #[test]
    fn higher_term_fences() {
        let g = guard(3);
        let err = g.check(Some(&header("c1", 5, "s9"))).expect_err("refused");
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
        let same_term = g.check(Some(&header("c1", 3, "s2"))).expect_err("fenced");
        assert!(matches!(
            same_term,
            Error::Fenced {
                theirs: AuthorityTerm(5),
                ..
            }
        ));
        assert!(g.ensure_not_fenced().is_err());
        // A lower foreign term afterwards does not lower the mark.
        g.observe_term(AuthorityTerm(4));
        assert_eq!(g.highest_foreign_term(), Some(AuthorityTerm(5)));
        g.set_term(AuthorityTerm(5));
        assert!(!g.is_fenced());
        assert!(g.check(Some(&header("c1", 5, "s9"))).is_ok());
    }

    // Goal: a missing header or a malformed sender is INVALID_REQUEST.
    // Method: check None and a sender id that is not a DNS label.
    #[test]
    fn refuses_missing_or_malformed_header() {
        let g = guard(1);
        assert!(matches!(g.check(None), Err(Error::InvalidRequest(_))));
        let bad = g.check(Some(&header("c1", 1, "Not A Node!")));
        assert!(matches!(bad, Err(Error::InvalidRequest(_))), "{bad:?}");
    }

    // Goal: the client learns fencing from the remote's refusal: a
    // STALE_TERM above ours records that term, a FENCED at our term records
    // ours + 1, a FENCED below ours records nothing, and other statuses are
    // not refusals. Method: feed statuses built from the crate Error.
    #[test]
    fn learns_from_remote_refusals() {
        let g = guard(3);
        let stale = tonic::Status::from(Error::StaleTerm {
            ours: AuthorityTerm(1),
            theirs: AuthorityTerm(0),
        });
        assert_eq!(g.observe_refusal(&stale).as_deref(), Some("STALE_TERM"));
        assert!(!g.is_fenced(), "a receiver below us does not fence us");

        let old_fenced = tonic::Status::from(Error::Fenced {
            ours: AuthorityTerm(2),
            theirs: AuthorityTerm(3),
        });
        g.observe_refusal(&old_fenced);
        assert!(
            !g.is_fenced(),
            "a fenced receiver below us says nothing about us"
        );

        let peer_fenced = tonic::Status::from(Error::Fenced {
            ours: AuthorityTerm(3),
            theirs: AuthorityTerm(4),
        });
        assert_eq!(g.observe_refusal(&peer_fenced).as_deref(), Some("FENCED"));
        assert_eq!(g.fenced_by(), Some(AuthorityTerm(4)));

        let newer = tonic::Status::from(Error::StaleTerm {
            ours: AuthorityTerm(7),
            theirs: AuthorityTerm(3),
        });
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
        guard(3).set_term(AuthorityTerm(2));
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
