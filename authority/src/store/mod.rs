//! redb-backed Raft log store and state machine (being written).
