//! The history of a run: every client operation with its invoke and
//! complete times (ms since the run began) and its outcome, and every
//! fault the nemesis injected with its window.

use serde::{Deserialize, Serialize};

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Outcome {
    /// A fence granted (kind `fence`): the fence.
    Ok {
        /// Its authority term.
        term: u64,
        /// Its sequence number in the term.
        seq: u64,
    },
    /// Done (every other kind): what it saw is in the operation's
    /// [`Detail`].
    Done,
    /// Refused with a typed code (it may still have taken effect when the
    /// refusal came after the proposal, e.g. `NO_QUORUM` while waiting).
    Refused {
        /// The stable code.
        code: String,
    },
    /// No answer in time, or the connection failed: unknown.
    Unknown {
        /// What happened.
        reason: String,
    },
}

impl Outcome {
    /// `ok`, `refused` or `unknown` (a granted fence and a done
    /// operation are both `ok`).
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } | Outcome::Done => "ok",
            Outcome::Refused { .. } => "refused",
            Outcome::Unknown { .. } => "unknown",
        }
    }
}

/// What an operation was about, beyond its outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "kebab-case")]
pub enum Detail {
    /// Nothing more (a fence).
    #[default]
    None,
    /// A fenced control-plane mutation of one register (kind `mutation`;
    /// `key`: a role on a node, present or absent): the state its client
    /// knew before, the state it asked for, and the state read back from
    /// PostgreSQL once the answer came (`None`: the read failed).
    Mutation {
        /// The register (`<node>/<role>`).
        key: String,
        /// Its state before, as the client last saw it.
        before: bool,
        /// The state asked for.
        asked: bool,
        /// Its state read back after the answer.
        after: Option<bool>,
    },
    /// One envelope of a scope: accepted by an agent's verifier (kind
    /// `read` or `watch`; `fresh`: newer than the one it held), recorded
    /// by PostgreSQL as published (kind `publication`), or served by the
    /// group after the final heal (kind `head`).
    Shard {
        /// The scope (`node/<id>`, `role/<role>`, ...).
        scope: String,
        /// Its version.
        version: u64,
        /// The authority term it was published in.
        term: u64,
        /// Its content hash (hex).
        hash: String,
        /// Whether it was newer than what the reader held.
        fresh: bool,
    },
    /// A promotion of survivors, or a rejoin of an old member, by the
    /// operator (kind `promote` / `rejoin`): the nodes named.
    Operator {
        /// The survivors promoted, or the node rejoined.
        nodes: Vec<String>,
        /// The authority term after it.
        term: u64,
    },
}

impl Detail {
    /// Whether there is nothing more.
    pub fn is_none(&self) -> bool {
        matches!(self, Detail::None)
    }
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client process (`client-1`, `mutator-1`, `agent-1`,
    /// `publications`, `operator`, ...).
    pub process: String,
    /// What it did: `fence`, `mutation`, `read`, `watch`, `publication`,
    /// `head`, `promote`, `rejoin`.
    pub kind: String,
    /// The storage node it asked (or `controlplane`).
    pub node: String,
    /// When it was sent, ms since the run began.
    pub invoke_ms: u64,
    /// When its answer (or its timeout) came.
    pub complete_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// What it was about.
    #[serde(default, skip_serializing_if = "Detail::is_none")]
    pub detail: Detail,
}

impl Op {
    /// The fence it was granted, as `(term, seq)` (only a `fence`
    /// operation is granted one).
    pub fn fence(&self) -> Option<(u64, u64)> {
        match self.outcome {
            Outcome::Ok { term, seq } => Some((term, seq)),
            _ => None,
        }
    }
}

/// One fault the nemesis injected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// `partition`, `one-way`, `bridge`, `pause`, `kill`, `delay`,
    /// `reset`, `promote`.
    pub kind: String,
    /// What exactly (e.g. `{s1} | {s2,s3}`).
    pub detail: String,
    /// When it began, ms since the run began.
    pub start_ms: u64,
    /// When it was healed.
    pub end_ms: u64,
}
