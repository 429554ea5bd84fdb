//! Chaos on real processes (`scripts/nemesis.sh`): `rap-configstore`
//! storage nodes whose every node-to-node link runs through a
//! fault-injecting TCP proxy of ours ([`proxy`]), a seeded nemesis that
//! partitions (majority/minority, one-way), pauses (SIGSTOP/SIGCONT),
//! kills (`kill -9`, restart) and slows links, a workload of fences
//! straight from the group whose every operation is logged with invoke
//! and complete times ([`history`]), a checker of the whole history
//! ([`checker`]) and a timeline picture ([`timeline`]). The binary
//! `nemesis` runs it all.

pub mod checker;
pub mod fabric;
pub mod history;
pub mod proxy;
pub mod timeline;
pub mod workload;
