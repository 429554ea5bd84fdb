//! `rap-controlplane`: the control plane (DESIGN.md §1, §3, §7).
//!
//! It will hold the PostgreSQL repositories (sqlx; the only crate with SQL),
//! the enrollment, role, trust and audit services, the snapshot compiler and
//! signer, and the admin and agent gRPC APIs.
//!
//! Status: the library is an empty boundary for now. The `rapctl` binary
//! (`src/bin/rapctl/`) already offers the snapshot tools that need no
//! server: `snapshot keygen|sign|show|verify` and `demo`. The private
//! PostgreSQL test harness lives in `pgtest/` (crate `rap-pgtest`).
