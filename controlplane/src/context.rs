//! What every control plane service needs: the database, the keys
//! directory, clients of the authority groups, and how agents reach us.

use crate::db::coordination::IdentityCache;
use crate::fencing::AuthorityClients;
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::Arc;

/// Shared state of one control plane process.
#[derive(Clone, Debug)]
pub struct Context {
    /// The source of truth.
    pub pool: PgPool,
    /// Where cluster CAs and signing keys live (0600 files, never in
    /// PostgreSQL).
    pub keys_dir: PathBuf,
    /// Clients of the clusters' authority groups.
    pub authority: AuthorityClients,
    /// The address agents use to reach this control plane (`host:port`),
    /// written into join commands.
    pub public_endpoint: String,
    /// The TLS listener's certificate registry, when serving TLS: new
    /// clusters are added to it at once.
    pub tls: Option<Arc<crate::tls::ControlPlaneTls>>,
    /// The identity cache of this process's agent API, when serving:
    /// revocation and renewal drop its answers at once (other processes'
    /// through [`crate::db::coordination::notify_identities_changed`]).
    /// Services see only the cache, not the API that owns it.
    pub identities: Option<Arc<dyn IdentityCache>>,
    /// Lifetime of the agent and storage node certificates issued
    /// (`node-cert-validity-s`; default 24 h). Nodes renew at about two
    /// thirds of it.
    pub node_cert_validity: std::time::Duration,
    /// High-risk admin calls need a TOTP step-up from every principal:
    /// one without TOTP may only enrol (`require-step-up`; default off:
    /// only principals with TOTP are asked).
    pub require_step_up: bool,
}

impl Context {
    /// Tells this process's agent API that these certificate serials are
    /// no longer active. Other processes are told by the revoking
    /// transaction itself ([`crate::db::coordination::notify_identities_changed`]),
    /// and answer from their caches only while they hear such notices
    /// ([`crate::db::coordination::IDENTITY_NOTICE_MAX`]).
    pub fn forget_serials(&self, serials: &[String]) {
        if let Some(identities) = &self.identities {
            identities.forget_serials(serials);
        }
    }
}
