//! Enrollment of a storage node through the control plane, and renewal of
//! its certificate (filled in below).

use crate::config::Config;
use rap_authority::tls::live::LiveIdentity;

/// Renews the node's certificate through the control plane when the node
/// was enrolled through one; `Ok(None)` when it was not (a development
/// certificate from `rap-configstore dev-ca`).
pub async fn renew_if_enrolled(
    _identity: &LiveIdentity,
    _config: &Config,
) -> anyhow::Result<Option<String>> {
    Ok(None)
}
