//! Raft RPCs over tonic (being written).
