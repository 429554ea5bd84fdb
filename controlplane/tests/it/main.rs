//! Integration tests of the control plane: its binaries, and its services
//! against a real PostgreSQL (rap-pgtest) and a real 3-voter authority
//! group (in-process rap-configstore nodes over mTLS, `support.rs`).
#![allow(clippy::unwrap_used, dead_code, missing_docs)]

mod audit;
mod cli;
mod enrollment;
mod groups;
mod grpc;
mod heartbeats;
mod identities;
mod multi;
mod orgs;
mod principals;
mod promotion;
mod rapctl;
mod roles;
mod support;
