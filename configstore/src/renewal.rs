//! Keeping the node's certificate current while it runs.
//!
//! [`keep_current`] wakes up often enough to act well inside the
//! certificate's life: it reloads the files when they changed on disk (a
//! renewal by `rap-configstore dev-ca renew`, or by this task), renews the
//! certificate through the control plane at about two thirds of its life
//! when the node was enrolled (the renewal writes the new key and
//! certificate, then reloads), and says loudly when a certificate nobody
//! renews is about to expire. Established connections are not touched:
//! new handshakes use the new certificate.

use crate::config::Config;
use rap_core::tls::live::LiveIdentity;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use rap_core::tls::{RENEW_AFTER_DENOMINATOR, RENEW_AFTER_NUMERATOR};

/// Longest pause between two checks of the certificate.
pub const CHECK_INTERVAL_MAX: Duration = Duration::from_secs(30);

/// Shortest pause between two checks (a short-lived test certificate).
pub const CHECK_INTERVAL_MIN: Duration = Duration::from_millis(250);

/// Checks per certificate lifetime: the renewal point is met within one
/// thirtieth of the life.
pub const CHECKS_PER_LIFETIME: u32 = 30;

const _: () = assert!(RENEW_AFTER_NUMERATOR < RENEW_AFTER_DENOMINATOR);
const _: () = assert!(CHECK_INTERVAL_MIN.as_millis() < CHECK_INTERVAL_MAX.as_millis());

/// How long `facts` has lived and has left, as of now.
fn life(identity: &LiveIdentity) -> (Duration, Duration, Duration) {
    let facts = identity.facts();
    let now = SystemTime::now();
    let lifetime = facts
        .not_after
        .duration_since(facts.not_before)
        .unwrap_or_default();
    let lived = now.duration_since(facts.not_before).unwrap_or_default();
    let left = facts.not_after.duration_since(now).unwrap_or_default();
    (lifetime, lived, left)
}

/// The pause between checks for a certificate of `lifetime`.
pub fn check_interval(lifetime: Duration) -> Duration {
    (lifetime / CHECKS_PER_LIFETIME).clamp(CHECK_INTERVAL_MIN, CHECK_INTERVAL_MAX)
}

/// Whether a certificate that lived `lived` of `lifetime` is due.
pub fn due(lifetime: Duration, lived: Duration) -> bool {
    lived * RENEW_AFTER_DENOMINATOR >= lifetime * RENEW_AFTER_NUMERATOR
}

/// Runs until `stop` turns true: reloads, renews, warns (see the module
/// docs).
pub async fn keep_current(
    identity: Arc<LiveIdentity>,
    config: Config,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut warned_serial = String::new();
    loop {
        let (lifetime, _, _) = life(&identity);
        let pause = check_interval(lifetime);
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(pause) => {}
        }
        match identity.reload() {
            Ok(true) => continue,
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "the certificate files changed but do not load; keeping the current certificate");
            }
        }
        let (lifetime, lived, left_now) = life(&identity);
        if !due(lifetime, lived) {
            continue;
        }
        match crate::enroll::renew_if_enrolled(&identity, &config).await {
            Ok(Some(serial)) => {
                tracing::info!(serial = %serial, "certificate renewed through the control plane");
                if let Err(error) = identity.reload() {
                    tracing::error!(%error, "the renewed certificate does not load");
                }
            }
            Ok(None) => {
                let serial = identity.facts().serial_hex;
                if warned_serial != serial {
                    warned_serial = serial;
                    tracing::warn!(
                        left_s = left_now.as_secs(),
                        cert = %identity.files().cert.display(),
                        "this node's certificate expires soon and this node was not enrolled through a control plane: renew it (`rap-configstore dev-ca renew`); it is reloaded without a restart"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(left_s = left_now.as_secs(), %error, "certificate renewal failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: renewal is due from two thirds of the life on; checks come
    // often enough for a 20 s certificate and rarely for a day-long one.
    // Method: arithmetic.
    #[test]
    fn renewal_point_and_interval() {
        let day = Duration::from_secs(86_400);
        assert!(!due(day, Duration::from_secs(57_000)));
        assert!(due(day, Duration::from_secs(57_600)));
        assert_eq!(check_interval(day), CHECK_INTERVAL_MAX);
        let short = Duration::from_secs(20);
        assert!(check_interval(short) < Duration::from_secs(1));
        assert_eq!(check_interval(Duration::ZERO), CHECK_INTERVAL_MIN);
    }
}
