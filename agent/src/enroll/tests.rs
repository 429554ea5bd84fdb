//! Unit tests of enrollment's input checks.

#![allow(clippy::unwrap_used)]
use super::*;

// Goal: durations parse with and without units; junk is refused.
#[test]
fn durations() {
    assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
    assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    for bad in ["", "s", "1.5s", "-1s", "5d", "99999999999999999999h", "1 s"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    assert!(check_poll_interval(Duration::from_millis(50)).is_err());
    assert!(check_poll_interval(POLL_INTERVAL_DEFAULT).is_ok());
    assert_eq!(check_wait(Duration::ZERO).unwrap(), None);
    assert!(check_wait(WAIT_MAX + Duration::from_secs(1)).is_err());
}

// Goal: the proof bytes are the prost encoding of JoinProofPayload
// (field by field), so the control plane's rebuild matches.
#[test]
fn proof_message_is_the_payload_encoding() {
    let message = proof_message(PURPOSE_JOIN, "c1", &[1; 32], 5, &[2; 16]);
    let decoded = pb::JoinProofPayload::decode(message.as_slice()).unwrap();
    assert_eq!(decoded.purpose, PURPOSE_JOIN);
    assert_eq!(decoded.cluster_id, "c1");
    assert_eq!(decoded.node_public_key, vec![1; 32]);
    assert_eq!(decoded.timestamp_unix_ms, 5);
    assert_eq!(decoded.nonce, vec![2; 16]);
    assert_eq!(decoded.encode_to_vec(), message);
}

// Goal: server, token, capability and role shapes.
#[test]
fn input_shapes() {
    assert_eq!(
        parse_server("cp.example.com:7443").unwrap(),
        "cp.example.com:7443"
    );
    assert_eq!(
        parse_server("https://10.0.0.1:7443/").unwrap(),
        "10.0.0.1:7443"
    );
    assert_eq!(parse_server("[::1]:7443").unwrap(), "[::1]:7443");
    for bad in [
        "",
        "cp",
        "cp:",
        ":7443",
        "cp:0",
        "cp:70000",
        "http://cp:1",
        "cp:1/x",
    ] {
        assert!(parse_server(bad).is_err(), "{bad}");
    }
    check_token("rapjt.0a1b.SeCreT123").unwrap();
    for bad in [
        "",
        "rapjt.0a1b",
        "rapat.0a1b.x",
        "rapjt.XY.x",
        "rapjt.0a.x.y",
        "rapjt..x",
    ] {
        let err = check_token(bad).unwrap_err().to_string();
        assert!(err.contains("rapjt.<id>.<secret>"), "{err}");
    }
    assert_eq!(
        parse_capability("can_run_rdp_worker=v2").unwrap(),
        pb::Capability {
            name: "can_run_rdp_worker".into(),
            detail: "v2".into()
        }
    );
    for bad in ["", "Upper", "has-dash", &"a".repeat(64)] {
        assert!(parse_capability(bad).is_err(), "{bad}");
    }
    assert!(parse_roles(&["entry-node".into()]).is_ok());
    assert!(parse_roles(&["Bad Role".into()]).is_err());
    assert!(parse_roles(&vec!["r".to_string(); REQUESTED_ROLES_MAX + 1]).is_err());
}
