//! The service catalog: which roles a node must hold (in its verified
//! `node/<id>` scope) before a desired service may run on it. The control
//! plane refuses a desired service whose role the node lacks; the agent
//! starts only services whose role its own node shard assigns.
//!
//! Every role's workload is named after the role. `synthetic-echo` is a
//! built-in test service (a TCP echo on loopback) that proves the
//! supervision path end to end on mesh nodes.

/// The built-in test service.
pub const SYNTHETIC_ECHO: &str = "synthetic-echo";

/// Each known service and the roles that may run it (any one of them).
pub const SERVICE_ROLES: &[(&str, &[&str])] = &[
    (SYNTHETIC_ECHO, &["entry-node", "relay-node"]),
    ("entry-node", &["entry-node"]),
    ("relay-node", &["relay-node"]),
    ("rdp-worker", &["rdp-worker"]),
    ("vnc-worker", &["vnc-worker"]),
    ("vpn-exit", &["vpn-exit"]),
    ("vpn-connector", &["vpn-connector"]),
    ("file-storage-cache", &["file-storage-cache"]),
    ("update-cache", &["update-cache"]),
    ("video-relay", &["video-relay"]),
];

/// The roles that may run `service`; `None` for a service not in the
/// catalog.
pub fn roles_for(service: &str) -> Option<&'static [&'static str]> {
    SERVICE_ROLES
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, roles)| *roles)
}

/// Whether a node holding `roles` may run `service`.
pub fn allowed<'a>(service: &str, mut roles: impl Iterator<Item = &'a str>) -> bool {
    roles_for(service).is_some_and(|allowed| roles.any(|role| allowed.contains(&role)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the catalog answers which roles run a service, and nothing
    // for an unknown one. Method: a few lookups.
    #[test]
    fn services_need_their_roles() {
        assert!(allowed(SYNTHETIC_ECHO, ["relay-node"].into_iter()));
        assert!(!allowed(SYNTHETIC_ECHO, ["rdp-worker"].into_iter()));
        assert!(allowed("rdp-worker", ["x", "rdp-worker"].into_iter()));
        assert!(!allowed("web", ["rdp-worker"].into_iter()));
        assert!(roles_for("web").is_none());
        for (service, roles) in SERVICE_ROLES {
            crate::ids::validate_id("service", service).unwrap();
            assert!(!roles.is_empty());
        }
    }
}
