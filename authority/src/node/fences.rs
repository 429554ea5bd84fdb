//! Group commit of fences: concurrent `AcquireFence` calls on the leader
//! share one Raft entry (`Request::AcquireFences`), so one log append, one
//! round of follower appends and one apply grant many fences. Each caller
//! still gets its own fence: the state machine grants the asks of an entry
//! in order, each the next sequence number of the term, exactly as if they
//! had been entries of their own (a refusal, e.g. `TERM_MISMATCH`, is that
//! caller's alone). A fence is answered only once its entry is committed
//! and applied, so durability is what it was: an acknowledged fence is in
//! the logs of a quorum.
//!
//! Shape: callers queue their ask and wait; the first caller to find no
//! batch running spawns the drainer, which proposes whatever is queued (at
//! most [`FENCE_BATCH_MAX`] per entry), answers those callers, and repeats
//! until the queue is empty. One entry is in flight at a time: the calls
//! that arrive meanwhile form the next batch, so batches grow with the
//! load and a lone caller waits for nobody. The drainer is a task of its
//! own, so a caller that goes away (a dropped RPC) never strands the
//! others.

use super::{AuthorityNode, unexpected};
use crate::error::{Error, Result};
use crate::limits::{FENCE_BATCH_MAX, FENCE_QUEUE_MAX};
use crate::request::{FenceAsk, Request, Response};
use rap_core::fence::Fence;
use rap_proto::ids::AuthorityTerm;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::oneshot;

/// The asks waiting for the next entry.
#[derive(Default)]
pub(super) struct FenceQueue {
    inner: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    draining: bool,
}

struct Waiter {
    ask: FenceAsk,
    answer: oneshot::Sender<Result<Fence>>,
}

impl AuthorityNode {
    /// Grants a fence (leader only; see [`AuthorityNode::propose`]),
    /// sharing a Raft entry with the calls made meanwhile.
    pub async fn acquire_fence(
        self: &Arc<Self>,
        purpose: &str,
        expected_term: AuthorityTerm,
    ) -> Result<Fence> {
        self.guard.ensure_not_fenced()?;
        let asked = std::time::Instant::now();
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = self
                .fences
                .inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if queue.waiting.len() >= FENCE_QUEUE_MAX {
                return Err(Error::Overloaded(format!(
                    "{FENCE_QUEUE_MAX} fence requests are waiting on this node already; retry later"
                )));
            }
            queue.waiting.push(Waiter {
                ask: FenceAsk {
                    purpose: purpose.to_string(),
                    expected_term,
                },
                answer,
            });
            !std::mem::replace(&mut queue.draining, true)
        };
        if start {
            let node = self.clone();
            tokio::spawn(async move { node.drain_fences().await });
        }
        let answer = answered.await.unwrap_or_else(|_| {
            Err(Error::Raft(
                "the fence batch ended without an answer (the node is stopping)".into(),
            ))
        });
        if answer.is_ok() {
            self.metrics.observe_fence_grant(asked.elapsed());
        }
        answer
    }

    /// Proposes the queued asks, a batch per entry, until none is left.
    async fn drain_fences(self: Arc<Self>) {
        loop {
            let batch: Vec<Waiter> = {
                let mut queue = self
                    .fences
                    .inner
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if queue.waiting.is_empty() {
                    queue.draining = false;
                    return;
                }
                let n = queue.waiting.len().min(FENCE_BATCH_MAX);
                queue.waiting.drain(..n).collect()
            };
            let asks = batch.iter().map(|w| w.ask.clone()).collect();
            match self.propose(Request::AcquireFences { asks }).await {
                Ok(Response::Fences(answers)) if answers.len() == batch.len() => {
                    for (waiter, answer) in batch.into_iter().zip(answers) {
                        let result = match answer {
                            Response::Fence(fence) => {
                                self.metrics.fence_granted();
                                #[cfg(debug_assertions)]
                                mutant::saw(&fence);
                                Ok(fence)
                            }
                            other => Err(unexpected(other)),
                        };
                        let _ = waiter.answer.send(result);
                    }
                }
                Ok(other) => {
                    for waiter in batch {
                        let _ = waiter.answer.send(Err(unexpected(other.clone())));
                    }
                }
                #[cfg(debug_assertions)]
                Err(Error::NoQuorum { .. }) if mutant::enabled() => {
                    // BROKEN ON PURPOSE (teeth of the nemesis): a leader
                    // that lost its quorum keeps granting from its own count.
                    for waiter in batch {
                        let _ = waiter.answer.send(Ok(mutant::grant(&self)));
                    }
                }
                Err(error) => {
                    for waiter in batch {
                        let _ = waiter.answer.send(Err(shared(&error)));
                    }
                }
            }
        }
    }
}

/// The same error for every caller of a batch.
fn shared(error: &Error) -> Error {
    match error {
        Error::NoQuorum {
            reachable_voters,
            total_voters,
        } => Error::NoQuorum {
            reachable_voters: *reachable_voters,
            total_voters: *total_voters,
        },
        Error::NotLeader { leader } => Error::NotLeader {
            leader: leader.clone(),
        },
        Error::Refused { code, message } => Error::Refused {
            code: code.clone(),
            message: message.clone(),
        },
        Error::Fenced { ours, theirs } => Error::Fenced {
            ours: *ours,
            theirs: *theirs,
        },
        Error::Overloaded(message) => Error::Overloaded(message.clone()),
        other => Error::Raft(other.to_string()),
    }
}

/// Teeth of the fault-injection harness, in debug builds only (a release
/// build has none of it): once [`enable_minority_grants_mutant`] was
/// called (`rap-configstore serve --nemesis-mutant minority-grants`), a
/// leader that lost its quorum keeps granting fences from its own count.
#[cfg(debug_assertions)]
pub mod mutant {
    use super::AuthorityNode;
    use rap_core::fence::Fence;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    static ENABLED: AtomicBool = AtomicBool::new(false);
    static LAST: Mutex<Option<Fence>> = Mutex::new(None);

    /// Breaks the rule for the rest of this process (debug builds only).
    pub fn enable_minority_grants_mutant() {
        ENABLED.store(true, Ordering::SeqCst);
    }

    pub(super) fn enabled() -> bool {
        ENABLED.load(Ordering::SeqCst)
    }

    pub(super) fn saw(fence: &Fence) {
        let mut last = LAST
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.as_ref().is_none_or(|l| fence.seq > l.seq) {
            *last = Some(fence.clone());
        }
    }

    pub(super) fn grant(node: &AuthorityNode) -> Fence {
        let mut last = LAST
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = match last.as_ref() {
            Some(l) => Fence {
                seq: rap_proto::ids::FenceSeq(l.seq.0 + 1),
                ..l.clone()
            },
            None => Fence {
                cluster_id: node.options.cluster_id.clone(),
                authority_term: rap_proto::ids::AuthorityTerm(1),
                seq: rap_proto::ids::FenceSeq(1),
                log_index: rap_proto::ids::LogIndex(0),
            },
        };
        *last = Some(next.clone());
        next
    }
}
