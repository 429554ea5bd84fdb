//! The history of a run: every client operation with its invoke and
//! complete times (ms since the run began) and its outcome, and every
//! fault the nemesis injected with its window.

use serde::{Deserialize, Serialize};

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Outcome {
    /// Granted: the fence.
    Ok {
        /// Its authority term.
        term: u64,
        /// Its sequence number in the term.
        seq: u64,
    },
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
    /// `ok`, `refused` or `unknown`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::Refused { .. } => "refused",
            Outcome::Unknown { .. } => "unknown",
        }
    }
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client process (`client-1`, ...).
    pub process: String,
    /// What it did (`fence`).
    pub kind: String,
    /// The storage node it asked.
    pub node: String,
    /// When it was sent, ms since the run began.
    pub invoke_ms: u64,
    /// When its answer (or its timeout) came.
    pub complete_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
}

impl Op {
    /// The fence it was granted, as `(term, seq)`.
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
    /// `partition`, `one-way`, `pause`, `kill`, `delay`.
    pub kind: String,
    /// What exactly (e.g. `{s1} | {s2,s3}`).
    pub detail: String,
    /// When it began, ms since the run began.
    pub start_ms: u64,
    /// When it was healed.
    pub end_ms: u64,
}
