//! The control plane's gRPC services.

pub mod admin;
pub mod agent;
pub mod enrollment;
pub mod probes;
