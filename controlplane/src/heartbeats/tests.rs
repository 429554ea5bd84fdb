//! Unit tests of the heartbeat batcher's pure parts: validation,
//! limits, the token bucket and the limiter.

use super::limiter::take_token;
use super::*;

fn heartbeat(node: &str, health: NodeHealth) -> Heartbeat {
    let request = HeartbeatRequest {
        cluster_id: "c1".into(),
        node_id: node.into(),
        health: health as i32,
        ..Default::default()
    };
    Heartbeat::from_request(&request, now_unix_ms()).expect("valid")
}

// Goal: the bucket allows a burst, then one per refill, and says how
// long to wait. Method: take_token at explicit instants.
#[test]
fn token_bucket_burst_refill_and_wait() {
    let t0 = Instant::now();
    let every = Duration::from_millis(100);
    let mut tat = t0;
    for _ in 0..3 {
        take_token(&mut tat, t0, every, 3).expect("burst");
    }
    let wait = take_token(&mut tat, t0, every, 3).expect_err("over the burst");
    assert_eq!(wait, every);
    take_token(&mut tat, t0 + every, every, 3).expect("one refilled");
    assert!(take_token(&mut tat, t0 + every, every, 3).is_err());
    // Long idle: full again, never more than the burst.
    let later = t0 + every * 100;
    for _ in 0..3 {
        take_token(&mut tat, later, every, 3).expect("full again");
    }
    assert!(take_token(&mut tat, later, every, 3).is_err());
}

// Goal: one node over its limit is refused as RATE_LIMITED with a
// retry hint, another node is not affected; a flapping node spends
// its change budget; idle nodes are forgotten when the table is full
// and busy ones are never dropped for a newcomer. Method: a limiter
// with small limits at explicit instants.
#[test]
fn limiter_is_per_node_bounded_and_budgets_changes() {
    let limiter = NodeLimiter::new(NodeLimits {
        burst: 2,
        refill: Duration::from_secs(1),
        nodes_max: 2,
        log_changes_max: 3,
        log_interval: Duration::from_secs(300),
    });
    let t0 = Instant::now();
    let a = heartbeat("a", NodeHealth::Healthy);
    assert!(limiter.admit(&a, t0).expect("first"));
    assert!(limiter.admit(&a, t0).expect("second: unchanged, logs"));
    let refused = limiter.admit(&a, t0).expect_err("third");
    assert_eq!(refused.code(), "RATE_LIMITED");
    assert!(refused.is_retryable());
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(
        tonic::Status::from(refused).code(),
        tonic::Code::ResourceExhausted
    );
    let b = heartbeat("b", NodeHealth::Healthy);
    assert!(limiter.admit(&b, t0).is_ok(), "another node is not limited");

    // Flapping: the first state counts as a change; three changes per
    // interval are logged, the next are not.
    let mut logged = Vec::new();
    for i in 0..6u32 {
        let at = t0 + Duration::from_secs(10 + u64::from(i) * 2);
        let health = if i % 2 == 0 {
            NodeHealth::Degraded
        } else {
            NodeHealth::Healthy
        };
        logged.push(
            limiter
                .admit(&heartbeat("b", health), at)
                .expect("within rate"),
        );
    }
    assert_eq!(logged, [true, true, false, false, false, false]);

    // The table is full (a, b); a newcomer while both are busy is
    // refused; once a is idle it takes a's place, and b (busy) stays.
    let c = heartbeat("c", NodeHealth::Healthy);
    let busy = t0 + Duration::from_secs(20);
    assert_eq!(
        limiter.admit(&c, busy).expect_err("table full").code(),
        "RATE_LIMITED"
    );
    let b_again = t0 + Duration::from_secs(300);
    assert!(limiter.admit(&b, b_again).is_ok());
    let a_idle = b_again + Duration::from_millis(500);
    assert!(limiter.admit(&c, a_idle).is_ok());
    assert_eq!(limiter.tracked(), 2);
    // b kept its state: its bucket is not full again.
    assert!(limiter.admit(&b, a_idle).is_ok());
    assert!(limiter.admit(&b, a_idle).is_err());
}

fn request(node: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        cluster_id: "c1".into(),
        node_id: node.into(),
        health: NodeHealth::Healthy as i32,
        ..Default::default()
    }
}

fn capability(name: &str, detail: &str) -> rap_proto::pb::Capability {
    rap_proto::pb::Capability {
        name: name.into(),
        detail: detail.into(),
    }
}

fn service(name: &str, state: &str) -> rap_proto::pb::ServiceStatus {
    rap_proto::pb::ServiceStatus {
        service: name.into(),
        state: state.into(),
        ..Default::default()
    }
}

// Goal: a valid heartbeat keeps what the agent reported, unknown health
// and service states become `unknown`, and sent_at 0 means "not sent".
// Method: build one from a request and read its fields and JSON columns.
#[test]
fn a_valid_heartbeat_is_normalized() {
    let mut r = request("n1");
    r.health = 999;
    r.capabilities = vec![capability("gpu", "a100")];
    r.services = vec![service("web", "running"), service("db", "exploded")];
    r.agent_version = "1.2.3".into();
    let hb = Heartbeat::from_request(&r, 42).expect("valid");
    assert_eq!(hb.cluster_id().as_str(), "c1");
    assert_eq!(hb.node_id().as_str(), "n1");
    assert_eq!(hb.received_at_ms(), 42);
    assert_eq!(hb.health(), Health::Unknown);
    assert_eq!(hb.sent_at_ms, None);
    assert!(hb.log_change);
    let states: Vec<_> = hb.services.iter().map(|s| s.state).collect();
    assert_eq!(states, [ServiceState::Running, ServiceState::Unknown]);
    let services: serde_json::Value =
        serde_json::from_str(&hb.services_json).expect("services json");
    assert_eq!(services[1]["state"], "unknown");
    let capabilities: serde_json::Value =
        serde_json::from_str(&hb.capabilities_json).expect("capabilities json");
    assert_eq!(capabilities, json!([{"name": "gpu", "detail": "a100"}]));
}

// Goal: every count and length limit is enforced with OVERSIZE naming
// what was too large. Method: one request per limit, one past it.
#[test]
fn limits_are_refused_as_oversize() {
    let mut r = request("n1");
    r.agent_version = "v".repeat(AGENT_VERSION_BYTES_MAX + 1);
    let e = Heartbeat::from_request(&r, 1).expect_err("long version");
    assert!(
        matches!(
            e,
            Error::Oversize {
                what: "agent version",
                ..
            }
        ),
        "{e}"
    );

    let mut r = request("n1");
    r.capabilities = (0..=CAPABILITIES_MAX)
        .map(|i| capability(&format!("c{i}"), ""))
        .collect();
    let e = Heartbeat::from_request(&r, 1).expect_err("too many capabilities");
    assert!(
        matches!(
            e,
            Error::Oversize {
                what: "capabilities",
                ..
            }
        ),
        "{e}"
    );

    let mut r = request("n1");
    r.services = (0..=HEARTBEAT_SERVICES_MAX)
        .map(|i| service(&format!("s{i}"), "running"))
        .collect();
    let e = Heartbeat::from_request(&r, 1).expect_err("too many services");
    assert!(
        matches!(
            e,
            Error::Oversize {
                what: "services",
                ..
            }
        ),
        "{e}"
    );

    let mut r = request("n1");
    r.capabilities = vec![capability(
        "gpu",
        &"d".repeat(CAPABILITY_DETAIL_BYTES_MAX + 1),
    )];
    let e = Heartbeat::from_request(&r, 1).expect_err("long detail");
    assert!(
        matches!(
            e,
            Error::Oversize {
                what: "capability detail",
                ..
            }
        ),
        "{e}"
    );

    let mut r = request("n1");
    r.agent_version = "x".repeat(HEARTBEAT_BYTES_MAX);
    let e = Heartbeat::from_request(&r, 1).expect_err("whole heartbeat too large");
    assert!(
        matches!(
            e,
            Error::Oversize {
                what: "heartbeat",
                ..
            }
        ),
        "{e}"
    );
}

// Goal: malformed input is refused as INVALID_ARGUMENT before it can
// reach the schema (bad capability names, NUL characters, duplicates,
// sent_at out of range, bad ids). Method: one bad field per request.
#[test]
fn malformed_heartbeats_are_refused() {
    let cases: Vec<(&str, HeartbeatRequest)> = vec![
        ("capability name with a capital", {
            let mut r = request("n1");
            r.capabilities = vec![capability("GPU", "")];
            r
        }),
        ("empty capability name", {
            let mut r = request("n1");
            r.capabilities = vec![capability("", "")];
            r
        }),
        ("NUL in the agent version", {
            let mut r = request("n1");
            r.agent_version = "1\u{0}".into();
            r
        }),
        ("duplicate capability", {
            let mut r = request("n1");
            r.capabilities = vec![capability("gpu", "a"), capability("gpu", "b")];
            r
        }),
        ("duplicate service", {
            let mut r = request("n1");
            r.services = vec![service("web", "running"), service("web", "stopped")];
            r
        }),
        ("negative sent_at", {
            let mut r = request("n1");
            r.sent_at_unix_ms = -1;
            r
        }),
        ("sent_at past year 9999", {
            let mut r = request("n1");
            r.sent_at_unix_ms = SENT_AT_UNIX_MS_MAX + 1;
            r
        }),
        ("node id that is not an id", request("Not An Id")),
    ];
    for (what, r) in cases {
        let e = Heartbeat::from_request(&r, 1).expect_err(what);
        assert_eq!(e.code(), "INVALID_ARGUMENT", "{what}: {e}");
    }
    let mut r = request("n1");
    r.sent_at_unix_ms = SENT_AT_UNIX_MS_MAX;
    let hb = Heartbeat::from_request(&r, 1).expect("the last millisecond of 9999 is fine");
    assert_eq!(hb.sent_at_ms, Some(SENT_AT_UNIX_MS_MAX));
}

// Goal: health and service states map to exactly the strings the schema's
// CHECK constraints allow. Method: map every wire value and a few strings.
#[test]
fn health_and_states_map_to_schema_values() {
    assert_eq!(
        Health::from_wire(NodeHealth::Healthy as i32).as_str(),
        "healthy"
    );
    assert_eq!(
        Health::from_wire(NodeHealth::Degraded as i32).as_str(),
        "degraded"
    );
    assert_eq!(
        Health::from_wire(NodeHealth::Unhealthy as i32).as_str(),
        "unhealthy"
    );
    assert_eq!(
        Health::from_wire(NodeHealth::Unspecified as i32).as_str(),
        "unknown"
    );
    assert_eq!(Health::from_wire(-7).as_str(), "unknown");
    for state in ["running", "stopped", "degraded", "failed"] {
        assert_eq!(ServiceState::parse(state).as_str(), state);
    }
    assert_eq!(ServiceState::parse("Running"), ServiceState::Unknown);
    assert_eq!(ServiceState::parse(""), ServiceState::Unknown);
}

// Goal: the submit refusals are recognized by their helpers, and only
// those. Method: classify the queue-full and rate-limited errors and a
// look-alike.
#[test]
fn refusal_helpers_recognize_their_errors() {
    assert!(is_overloaded(&Error::Overloaded(QUEUE_FULL_MESSAGE.into())));
    assert!(!is_overloaded(&Error::Overloaded(STOPPED_MESSAGE.into())));
    let limited = Error::RateLimited {
        what: "x".into(),
        retry_after: Duration::from_secs(1),
    };
    assert!(is_rate_limited(&limited));
    assert!(!is_rate_limited(&Error::Overloaded(
        QUEUE_FULL_MESSAGE.into()
    )));
}
