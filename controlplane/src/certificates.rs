//! The certificate expiry report (`ListExpiringCertificates`, `rapctl
//! certs check-expiration`): which certificates end within a window,
//! soonest first. Nodes' and storage nodes' certificates come from
//! PostgreSQL (`node_identities`, a page at a time); the CAs and the
//! control plane's own certificates from its keys directory
//! ([`crate::keys::expiry`], on the first page). Platform principals only.

use crate::auth::Principal;
use crate::context::Context;
use crate::db;
use crate::error::{Error, Result};
use crate::keys::expiry::{self, CertFile};
use crate::limits::{CERT_EXPIRY_WINDOW_DEFAULT, CERT_EXPIRY_WINDOW_MAX};
use crate::page::Page;
use rap_proto::ids::ClusterId;
use rap_proto::pb;
use rap_proto::time::UnixMillis;

/// `state` of a certificate that has ended.
pub const STATE_EXPIRED: &str = "expired";
/// `state` of one that ends within the window.
pub const STATE_EXPIRING: &str = "expiring";
/// `state` of a key file that cannot be read or parsed.
pub const STATE_UNREADABLE: &str = "unreadable";

/// The page token after `row`: its (not after, identity id).
fn token_of(row: &db::nodes::IdentityExpiry) -> String {
    format!("{}.{}", row.not_after_unix_ms, row.identity_id)
}

/// The (not after, identity id) a page token names.
fn parse_token(token: &str) -> Result<(i64, i64)> {
    let refused = || Error::invalid("the page token is not one this call gave");
    let (ms, id) = token.split_once('.').ok_or_else(refused)?;
    Ok((
        ms.parse().map_err(|_| refused())?,
        id.parse().map_err(|_| refused())?,
    ))
}

fn state(not_after_unix_ms: i64, now: UnixMillis) -> &'static str {
    if not_after_unix_ms <= now.0 {
        STATE_EXPIRED
    } else {
        STATE_EXPIRING
    }
}

/// The key files of `clusters` (and the platform's when `platform`),
/// read on a blocking thread: those ending before `until`, and every one
/// that cannot be read.
async fn key_files(
    ctx: &Context,
    clusters: Vec<ClusterId>,
    platform: bool,
    until: i64,
    now: UnixMillis,
) -> Result<Vec<pb::ExpiringCertificate>> {
    let keys_dir = ctx.keys_dir.clone();
    let read = move || {
        let mut files: Vec<CertFile> = Vec::new();
        if platform {
            files.extend(expiry::platform_cert_files(&keys_dir));
        }
        for cluster in &clusters {
            files.extend(expiry::cluster_cert_files(&keys_dir, cluster));
        }
        files
            .into_iter()
            .filter_map(|file| {
                let mut found = pb::ExpiringCertificate {
                    cluster_id: file.cluster_id.clone().unwrap_or_default(),
                    kind: file.role.name().to_string(),
                    subject: file.path.display().to_string(),
                    renewed_automatically: file.role.renewed_automatically(),
                    ..Default::default()
                };
                match expiry::read_cert_expiry(&file.path) {
                    Ok(None) => return None,
                    Ok(Some(cert)) if cert.not_after_unix_ms >= until => return None,
                    Ok(Some(cert)) => {
                        found.serial = cert.serial_hex;
                        found.not_after_unix_ms = cert.not_after_unix_ms;
                        found.state = state(cert.not_after_unix_ms, now).to_string();
                    }
                    Err(why) => {
                        found.state = STATE_UNREADABLE.to_string();
                        found.error = why;
                    }
                }
                Some(found)
            })
            .collect::<Vec<_>>()
    };
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| Error::Internal(format!("reading the keys directory: {e}")))
}

/// The certificates that end within the request's window (default
/// [`CERT_EXPIRY_WINDOW_DEFAULT`], at most [`CERT_EXPIRY_WINDOW_MAX`]),
/// soonest first: one page of node identities and, on the first page,
/// the key files (an unreadable one first). Platform principals only.
pub async fn expiring(
    ctx: &Context,
    principal: &Principal,
    request: &pb::ListExpiringCertificatesRequest,
) -> Result<pb::ListExpiringCertificatesResponse> {
    principal.require_platform()?;
    let within = match request.within_seconds {
        0 => CERT_EXPIRY_WINDOW_DEFAULT.as_secs(),
        seconds if seconds > CERT_EXPIRY_WINDOW_MAX.as_secs() => {
            return Err(Error::invalid(format!(
                "the window is at most {} days",
                CERT_EXPIRY_WINDOW_MAX.as_secs() / 86_400
            )));
        }
        seconds => seconds,
    };
    let page = Page::from_pb(request.page.as_ref());
    let after = if page.after.is_empty() {
        (i64::MIN, i64::MIN)
    } else {
        parse_token(&page.after)?
    };
    let now = UnixMillis::now();
    let until = now.plus_ms(i64::try_from(within.saturating_mul(1000)).unwrap_or(i64::MAX));
    let mut conn = ctx.pool.acquire().await?;
    let clusters = if request.cluster_id.is_empty() {
        db::clusters::all_ids(&mut conn).await?
    } else {
        let cluster = ClusterId::new(&request.cluster_id)?;
        crate::clusters::require_exists(&mut conn, cluster.as_str()).await?;
        vec![request.cluster_id.clone()]
    };
    let mut rows = db::nodes::expiring_identities(
        &mut conn,
        &request.cluster_id,
        until.0,
        after,
        page.limit(),
    )
    .await?;
    drop(conn);
    let next_page_token = page.finish(&mut rows, token_of);
    let mut certificates = if page.after.is_empty() {
        let clusters = clusters
            .iter()
            .filter_map(|id| ClusterId::new(id).ok())
            .collect();
        key_files(ctx, clusters, request.cluster_id.is_empty(), until.0, now).await?
    } else {
        Vec::new()
    };
    certificates.extend(rows.into_iter().map(|row| pb::ExpiringCertificate {
        state: state(row.not_after_unix_ms, now).to_string(),
        cluster_id: row.cluster_id,
        kind: row.kind,
        subject: row.node_id,
        serial: row.certificate_serial,
        not_after_unix_ms: row.not_after_unix_ms,
        renewed_automatically: true,
        error: String::new(),
    }));
    // Unreadable files first (they need looking at whatever their date),
    // then soonest first.
    certificates.sort_by_key(|c| (c.state != STATE_UNREADABLE, c.not_after_unix_ms));
    Ok(pb::ListExpiringCertificatesResponse {
        certificates,
        next_page_token,
        checked_at_unix_ms: now.0,
    })
}
