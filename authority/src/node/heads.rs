//! Linearizable reads of the newest shard of each scope, for the control
//! plane's publisher and `GetSnapshot`: the leader confirms its leadership
//! with a quorum and waits until it has applied everything committed
//! before the read (`ensure_linearizable`), so a read made after a granted
//! fence sees every publish before that fence.

use super::*;
use crate::limits::{HEADS_ENVELOPES_MAX, HEADS_SCOPES_MAX};
use crate::state::ShardRecord;
use openraft::error::CheckIsLeaderError;
use rap_proto::envelope::VerifiedTrustRoot;
use rap_proto::ids::TrustGeneration;
use rap_proto::pb;

impl AuthorityNode {
    /// The newest applied shard of each of `scopes` (every scope when
    /// empty), sorted by scope, with the authority term; leader only
    /// (`NotLeader` elsewhere, so the service forwards it).
    pub async fn shard_heads(
        &self,
        scopes: &[String],
        include_envelopes: bool,
    ) -> Result<(AuthorityTerm, TrustGeneration, Vec<pb::ShardHead>)> {
        if scopes.len() > HEADS_SCOPES_MAX {
            return Err(Error::Oversize {
                what: "scopes of a heads request",
                limit: HEADS_SCOPES_MAX,
                got: scopes.len(),
            });
        }
        self.guard.ensure_not_fenced()?;
        let metrics = self.raft_metrics();
        let voters = Self::voters(&metrics);
        if metrics.current_leader != Some(self.raft_id) {
            return Err(Error::NotLeader {
                leader: metrics
                    .current_leader
                    .and_then(|id| voters.get(&id).map(|m| m.node_id.clone())),
            });
        }
        let budget = self.options.timing.write_budget();
        match tokio::time::timeout(budget, self.raft.ensure_linearizable()).await {
            Err(_elapsed) => return Err(self.no_quorum(&voters)),
            Ok(Ok(_)) => {}
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                return Err(Error::NotLeader { leader: None });
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                return Err(self.no_quorum(&voters));
            }
            Ok(Err(e)) => return Err(Error::Raft(format!("linearizable read: {e}"))),
        }
        let (term, root, records) = self.view.read(|state| {
            let records: Vec<(String, ShardRecord)> = if scopes.is_empty() {
                state
                    .shards
                    .iter()
                    .map(|(scope, record)| (scope.clone(), record.clone()))
                    .collect()
            } else {
                let mut asked: Vec<&String> = scopes.iter().collect();
                asked.sort();
                asked.dedup();
                asked
                    .into_iter()
                    .filter_map(|scope| {
                        state
                            .shards
                            .get(scope)
                            .map(|record| (scope.clone(), record.clone()))
                    })
                    .collect()
            };
            (
                state.authority_term,
                state.current_trust_root().to_vec(),
                records,
            )
        });
        let generation = VerifiedTrustRoot::reload(&root, &self.options.cluster_id)
            .map_err(|e| Error::Storage(format!("the applied trust root does not load: {e}")))?
            .generation();
        if include_envelopes && records.len() > HEADS_ENVELOPES_MAX {
            return Err(Error::Oversize {
                what: "heads with envelopes",
                limit: HEADS_ENVELOPES_MAX,
                got: records.len(),
            });
        }
        let mut heads = Vec::with_capacity(records.len());
        for (scope, record) in records {
            // Every stored envelope was verified when it was applied.
            let header = rap_proto::envelope::decode(&record.envelope)
                .map_err(|e| Error::Storage(format!("stored shard {scope} does not decode: {e}")))?
                .header;
            heads.push(pb::ShardHead {
                scope,
                version: record.version.0,
                header_hash: record.header_hash.0.to_vec(),
                content_hash: header.content_hash.0.to_vec(),
                authority_term: record.authority_term.0,
                trust_generation: record.trust_generation.0,
                issued_at_unix_ms: header.issued_at.0,
                expires_at_unix_ms: header.expires_at.0,
                envelope: if include_envelopes {
                    record.envelope.into_vec()
                } else {
                    Vec::new()
                },
            });
        }
        Ok((term, generation, heads))
    }
}
