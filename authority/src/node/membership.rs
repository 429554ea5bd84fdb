//! The group's lifecycle as one node runs it: bootstrap with its genesis
//! entry, adding a voter once it has caught up, removing one.

use super::*;

impl AuthorityNode {
    /// Initializes a new group on this node with `voters` (this node must
    /// be one), waits for a leader, and commits the genesis entry.
    pub async fn bootstrap(
        &self,
        voters: Vec<Member>,
        trust_root: Vec<u8>,
        allow_single_voter: bool,
    ) -> Result<(AuthorityTerm, Tolerance)> {
        let minimum = if allow_single_voter { 1 } else { 3 };
        if voters.len() < minimum {
            return Err(Error::InvalidRequest(format!(
                "{} voter(s) given; a group needs at least 3 (use --allow-single-voter for development)",
                voters.len()
            )));
        }
        if voters.len() > crate::limits::VOTERS_MAX {
            return Err(Error::Oversize {
                what: "voters",
                limit: crate::limits::VOTERS_MAX,
                got: voters.len(),
            });
        }
        let mut members = BTreeMap::new();
        for member in &voters {
            NodeId::new(member.node_id.as_str())?;
            if members
                .insert(raft_id_of(&member.node_id), member.clone())
                .is_some()
            {
                return Err(Error::InvalidRequest(format!(
                    "voter {} is listed twice (or its raft id collides)",
                    member.node_id
                )));
            }
        }
        if !members.contains_key(&self.raft_id) {
            return Err(Error::InvalidRequest(format!(
                "bootstrap must be sent to one of the voters; {} is not listed",
                self.options.node_id
            )));
        }
        match self.raft.initialize(members).await {
            Ok(()) => {}
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                return Err(Error::Refused {
                    code: "ALREADY_INITIALIZED".into(),
                    message: "this node already belongs to a group".into(),
                });
            }
            Err(e) => return Err(Error::Raft(format!("initialize: {e}"))),
        }
        let budget = self.options.timing.election_timeout_max * BOOTSTRAP_ELECTION_TIMEOUTS_MAX;
        let genesis = Request::Genesis {
            cluster_id: self.options.cluster_id.clone(),
            trust_root: ByteBuf::from(trust_root),
        };
        let deadline = Instant::now() + budget;
        loop {
            match self.propose_within(genesis.clone(), budget).await {
                Ok(Response::Done) => break,
                Ok(other) => return Err(unexpected(other)),
                Err(Error::NotLeader { .. }) | Err(Error::NoQuorum { .. })
                    if Instant::now() < deadline =>
                {
                    // Another voter won the first election: it proposes
                    // nothing by itself, so wait until genesis is applied
                    // there, or propose once it is us.
                    if self.view.cluster_id().is_some() {
                        break;
                    }
                    if let Some(leader) = self.fresh_leader() {
                        // Every voter is bootstrapped at once, so the
                        // leader may be new and its quorum lease not yet
                        // valid: a refusal before the deadline is retried.
                        match self.forward_genesis(&leader, &genesis).await {
                            Ok(()) => break,
                            Err(e) if Instant::now() < deadline => {
                                tracing::debug!(
                                    cluster_id = %self.options.cluster_id,
                                    node_id = %self.options.node_id,
                                    error = %e,
                                    "genesis not committed yet; retrying"
                                );
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    tokio::time::sleep(self.options.timing.heartbeat).await;
                }
                // `initialize` returned before the membership it wrote
                // shows in the metrics (a single voter can get here that
                // soon): not "no group", only not yet.
                Err(Error::Refused { code, .. })
                    if code == "NOT_INITIALIZED" && Instant::now() < deadline =>
                {
                    tokio::time::sleep(self.options.timing.heartbeat).await;
                }
                Err(e) => return Err(e),
            }
        }
        let candidates: Vec<Candidate> = voters.iter().map(candidate).collect();
        Ok((AuthorityTerm(1), failure_tolerance(&candidates)))
    }

    pub(super) async fn forward_genesis(&self, leader: &Member, genesis: &Request) -> Result<()> {
        // The leader's Bootstrap handler proposes the genesis entry when
        // the group is initialized but has no cluster yet.
        let Request::Genesis { trust_root, .. } = genesis else {
            return Err(Error::InvalidRequest("not a genesis request".into()));
        };
        let mut client = self.authority_client(leader)?;
        let metrics = self.raft_metrics();
        let voters = Self::voters(&metrics)
            .into_values()
            .map(|m| crate::convert::voter_spec(&m))
            .collect();
        client
            .bootstrap(crate::client::mark_forwarded(
                rap_proto::pb::BootstrapGroupRequest {
                    cluster_id: self.options.cluster_id.to_string(),
                    voters,
                    trust_root: trust_root.to_vec(),
                    allow_single_voter: true,
                },
            ))
            .await
            .map(|_| ())
            .or_else(|status| {
                // The leader answers ALREADY_INITIALIZED once the group has
                // its genesis entry, whether it committed it just now for
                // us or before: either way the bootstrap is done.
                match rap_core::codes::error_detail(&status) {
                    Some(detail) if detail.code == "ALREADY_INITIALIZED" => Ok(()),
                    _ => Err(Error::Raft(format!(
                        "forward genesis to {}: {status}",
                        leader.node_id
                    ))),
                }
            })
    }

    /// Proposes genesis on a group that is initialized but has no cluster
    /// yet (the leader's side of a forwarded bootstrap).
    pub async fn complete_genesis(&self, trust_root: Vec<u8>) -> Result<()> {
        if self.view.cluster_id().is_some() {
            return Ok(());
        }
        match self
            .propose(Request::Genesis {
                cluster_id: self.options.cluster_id.clone(),
                trust_root: ByteBuf::from(trust_root),
            })
            .await?
        {
            Response::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Whether Raft already has a membership (the group was initialized).
    pub fn is_initialized(&self) -> bool {
        !Self::voters(&self.raft_metrics()).is_empty()
    }

    /// Adds a voter: first as a learner (caught up), then promoted.
    pub async fn add_voter(&self, member: Member) -> Result<()> {
        NodeId::new(member.node_id.as_str())?;
        self.require_leader()?;
        let id = raft_id_of(&member.node_id);
        let node_id = member.node_id.clone();
        // Not openraft's blocking mode: it ignores how its wait ended and
        // would let a learner that never caught up be promoted, a voter
        // that only lowers the group's tolerance.
        let added = self
            .raft
            .add_learner(id, member, false)
            .await
            .map_err(|e| Error::Raft(format!("add learner: {e}")))?;
        self.wait_learner(id, &node_id, added.log_id.index).await?;
        let mut voters: BTreeSet<RaftNodeId> =
            Self::voters(&self.raft_metrics()).into_keys().collect();
        if voters.len() >= crate::limits::VOTERS_MAX {
            return Err(Error::Oversize {
                what: "voters",
                limit: crate::limits::VOTERS_MAX,
                got: voters.len() + 1,
            });
        }
        voters.insert(id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| Error::Raft(format!("promote learner: {e}")))?;
        Ok(())
    }

    /// Waits until the leader has replicated up to `index` to learner `id`.
    /// Refuses with [`LEARNER_BEHIND`] when the learner has not answered
    /// any Raft RPC since the wait began within
    /// [`LEARNER_SILENCE_ELECTION_TIMEOUTS`] election timeouts (down, or
    /// refusing us), or has not caught up within [`LEARNER_CATCH_UP_MAX`].
    pub(super) async fn wait_learner(
        &self,
        id: RaftNodeId,
        node_id: &str,
        index: u64,
    ) -> Result<()> {
        let started = tokio::time::Instant::now();
        let silence = self.options.timing.election_timeout_max * LEARNER_SILENCE_ELECTION_TIMEOUTS;
        loop {
            self.require_leader()?;
            let metrics = self.raft_metrics();
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|replication| replication.get(&id).cloned().flatten());
            if matched.is_some_and(|log_id| log_id.index >= index) {
                return Ok(());
            }
            let answered = self
                .reach
                .peer(id)
                .and_then(|peer| peer.last_success)
                .is_some_and(|at| at >= started);
            let waited = started.elapsed();
            if (!answered && waited > silence) || waited > LEARNER_CATCH_UP_MAX {
                return Err(Error::Refused {
                    code: LEARNER_BEHIND.into(),
                    message: format!(
                        "{node_id} has not caught up after {waited:?} ({}); it stays a learner, \
                         not counted for quorum. Check that it runs at its address with a storage \
                         certificate of this cluster and was told the group's members \
                         (PrepareJoin, which `rap-configstore add-voter` sends), then add it again",
                        if answered {
                            "it answers but is still behind"
                        } else {
                            "it answered no Raft RPC"
                        }
                    ),
                });
            }
            tokio::time::sleep(self.options.timing.heartbeat).await;
        }
    }

    /// Removes a voter.
    pub async fn remove_voter(&self, node_id: &NodeId) -> Result<()> {
        self.require_leader()?;
        let id = raft_id_of(node_id.as_str());
        let mut voters: BTreeSet<RaftNodeId> =
            Self::voters(&self.raft_metrics()).into_keys().collect();
        if !voters.remove(&id) {
            return Err(Error::InvalidRequest(format!("{node_id} is not a voter")));
        }
        if voters.is_empty() {
            return Err(Error::InvalidRequest("cannot remove the last voter".into()));
        }
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| Error::Raft(format!("remove voter: {e}")))?;
        self.reach.forget(id);
        Ok(())
    }

    pub(super) fn require_leader(&self) -> Result<()> {
        let metrics = self.raft_metrics();
        if metrics.current_leader == Some(self.raft_id) {
            return Ok(());
        }
        let leader = metrics
            .current_leader
            .and_then(|id| {
                metrics
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .cloned()
            })
            .map(|m| m.node_id);
        Err(Error::NotLeader { leader })
    }
}
