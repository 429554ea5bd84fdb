//! Checks of what the operator typed (server, token, capabilities, roles,
//! durations) and the facts the node reports about itself.

use super::*;

/// Checks `host:port` (an `https://` prefix is tolerated) and returns it
/// without the scheme.
pub fn parse_server(text: &str) -> Result<String, EnrollError> {
    let invalid = |reason: String| EnrollError::Invalid {
        what: "--server",
        reason,
    };
    let text = text.trim();
    let text = text.strip_prefix("https://").unwrap_or(text);
    let text = text.strip_suffix('/').unwrap_or(text);
    if text.is_empty() || text.len() > SERVER_BYTES_MAX {
        return Err(invalid(format!(
            "expected host:port of at most {SERVER_BYTES_MAX} bytes"
        )));
    }
    if text.contains("://") || text.contains('/') || text.contains(char::is_whitespace) {
        return Err(invalid(format!("expected host:port, got {text:?}")));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| invalid(format!("expected host:port, got {text:?}")))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(invalid(format!("expected host:port, got {text:?}")));
    }
    Ok(text.to_string())
}

/// Checks the shape of a join token (`rapjt.<hex id>.<alphanumeric
/// secret>`) without echoing the secret.
pub fn check_token(token: &str) -> Result<(), EnrollError> {
    let invalid = |reason: &str| EnrollError::Invalid {
        what: "--token",
        reason: reason.to_string(),
    };
    if token.len() > TOKEN_BYTES_MAX {
        return Err(invalid("longer than a join token"));
    }
    let mut parts = token.split('.');
    let (prefix, id, secret) = (parts.next(), parts.next(), parts.next());
    let shaped = prefix == Some(JOIN_TOKEN_PREFIX)
        && parts.next().is_none()
        && id.is_some_and(|id| {
            !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        && secret.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()));
    if shaped {
        Ok(())
    } else {
        Err(invalid(
            "expected rapjt.<id>.<secret>, as printed by `rapctl token create`",
        ))
    }
}

/// Parses `NAME` or `NAME=DETAIL` (`NAME` is `[a-z0-9_]{1,63}`).
pub fn parse_capability(text: &str) -> Result<pb::Capability, EnrollError> {
    let (name, detail) = text.split_once('=').unwrap_or((text, ""));
    let ok = !name.is_empty()
        && name.len() <= CAPABILITY_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(EnrollError::Invalid {
            what: "--capability",
            reason: format!(
                "{:?} is not NAME[=DETAIL] with NAME in [a-z0-9_]{{1,{CAPABILITY_NAME_BYTES_MAX}}}",
                shorten(text)
            ),
        });
    }
    if detail.len() > CAPABILITY_DETAIL_BYTES_MAX {
        return Err(EnrollError::Invalid {
            what: "--capability",
            reason: format!(
                "the detail of {name} is {} bytes; at most {CAPABILITY_DETAIL_BYTES_MAX}",
                detail.len()
            ),
        });
    }
    Ok(pb::Capability {
        name: name.to_string(),
        detail: detail.to_string(),
    })
}

/// Parses a duration: a whole number with unit `ms`, `s`, `m` or `h`, or
/// a bare number of seconds. `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!(
            "{:?} is not a duration like 500ms, 5s, 2m or 1h",
            shorten(text)
        )
    })?;
    let per_unit_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60 * 1000,
        "h" => 3600 * 1000,
        _ => {
            return Err(format!(
                "unknown unit {:?} in {:?}; use ms, s, m or h",
                shorten(unit),
                shorten(text)
            ));
        }
    };
    number
        .checked_mul(per_unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{:?} is too long", shorten(text)))
}

/// Checks a poll interval against [`POLL_INTERVAL_MIN`]..=[`POLL_INTERVAL_MAX`].
pub fn check_poll_interval(interval: Duration) -> Result<Duration, EnrollError> {
    if interval < POLL_INTERVAL_MIN || interval > POLL_INTERVAL_MAX {
        return Err(EnrollError::Invalid {
            what: "--poll-interval",
            reason: format!(
                "{interval:?} is outside {POLL_INTERVAL_MIN:?}..={POLL_INTERVAL_MAX:?}"
            ),
        });
    }
    Ok(interval)
}

/// `--wait`: zero polls until interrupted (`None`); at most [`WAIT_MAX`].
pub fn check_wait(wait: Duration) -> Result<Option<Duration>, EnrollError> {
    if wait > WAIT_MAX {
        return Err(EnrollError::Invalid {
            what: "--wait",
            reason: format!("{wait:?} is longer than {WAIT_MAX:?}"),
        });
    }
    Ok((!wait.is_zero()).then_some(wait))
}

/// Checks requested roles: valid role names, at most
/// [`REQUESTED_ROLES_MAX`].
pub fn parse_roles(roles: &[String]) -> Result<Vec<RoleName>, EnrollError> {
    if roles.len() > REQUESTED_ROLES_MAX {
        return Err(EnrollError::Invalid {
            what: "--role",
            reason: format!("{} roles; at most {REQUESTED_ROLES_MAX}", roles.len()),
        });
    }
    roles
        .iter()
        .map(|r| {
            RoleName::new(r.as_str()).map_err(|e| EnrollError::Invalid {
                what: "--role",
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Facts about this host: `hostname` (default: the kernel's host name),
/// OS, architecture, agent version and failure domain.
pub fn local_facts(
    hostname: Option<&str>,
    domain: pb::FailureDomain,
) -> Result<pb::NodeFacts, EnrollError> {
    let hostname = match hostname {
        Some(h) => h.trim().to_string(),
        None => crate::state::read_bounded(Path::new(HOSTNAME_FILE), HOSTNAME_FILE_BYTES_MAX)
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default(),
    };
    for (what, value) in [
        ("--hostname", &hostname),
        ("--region", &domain.region),
        ("--zone", &domain.zone),
        ("--host", &domain.host),
    ] {
        if value.len() > FACT_TEXT_BYTES_MAX || value.chars().any(char::is_control) {
            return Err(EnrollError::Invalid {
                what,
                reason: format!(
                    "at most {FACT_TEXT_BYTES_MAX} bytes of printable text, got {:?}",
                    shorten(value)
                ),
            });
        }
    }
    Ok(pb::NodeFacts {
        hostname,
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        domain: Some(domain),
        labels: Default::default(),
    })
}

pub(super) fn shorten(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 80;
    let mut shown: String = text.chars().take(SHOWN_CHARS_MAX).collect();
    if text.chars().count() > SHOWN_CHARS_MAX {
        shown.push('…');
    }
    shown
}
