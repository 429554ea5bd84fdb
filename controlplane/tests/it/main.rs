//! Integration tests of the control plane library: its services
//! against a real PostgreSQL (rap-pgtest) and a real 3-voter authority
//! group (in-process rap-configstore nodes over mTLS): `rap_testkit::platform`.
#![allow(clippy::unwrap_used, dead_code, missing_docs)]

mod audit;
mod authority_terms;
mod caches;
mod console;
mod enrollment;
mod groups;
mod grpc;
mod heartbeats;
mod identities;
mod metrics;
mod orgs;
mod principals;
mod probes;
mod promotion;
mod roles;
mod schema;
mod snapshots;
mod watch;
