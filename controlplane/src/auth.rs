//! Admin principals and their bearer tokens (`rapat.<id>.<secret>`).
//!
//! Kinds: `platform-owner` (everything, including promotion and creating
//! principals), `platform-admin` (cluster and node trust and placement),
//! `org-admin(org)` (only the org-safe projection of its own organization;
//! never node ids of core mesh nodes, other orgs, trust material or
//! partition internals). Seed Golden Rules 5–7.

use crate::error::{Error, Result};
use crate::secret;
use sqlx::PgPool;

/// Token prefix of admin API tokens.
pub const API_TOKEN_PREFIX: &str = "rapat";
/// Principal id of the first platform owner made by `rap-controlplane init`.
pub const FIRST_OWNER_ID: &str = "owner";
/// Longest `authorization` header accepted.
pub const AUTHORIZATION_BYTES_MAX: usize = 512;

/// What a principal may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Owns the platform.
    PlatformOwner,
    /// Operates clusters and nodes.
    PlatformAdmin,
    /// Administers one organization.
    OrgAdmin(String),
}

impl Kind {
    /// The stored name of the kind.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::PlatformOwner => "platform-owner",
            Kind::PlatformAdmin => "platform-admin",
            Kind::OrgAdmin(_) => "org-admin",
        }
    }

    /// Parses a kind name (+ org for org admins).
    pub fn parse(name: &str, org: Option<&str>) -> Result<Kind> {
        match (name, org.filter(|o| !o.is_empty())) {
            ("platform-owner", None) => Ok(Kind::PlatformOwner),
            ("platform-admin", None) => Ok(Kind::PlatformAdmin),
            ("org-admin", Some(org)) => Ok(Kind::OrgAdmin(
                rap_proto::ids::OrgId::new(org)?.as_str().to_string(),
            )),
            ("org-admin", None) => Err(Error::invalid("an org-admin needs --org")),
            ("platform-owner" | "platform-admin", Some(_)) => {
                Err(Error::invalid("only org-admin principals belong to an org"))
            }
            (other, _) => Err(Error::invalid(format!(
                "unknown principal kind {other:?}: platform-owner, platform-admin or org-admin"
            ))),
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: Kind,
    /// Display name.
    pub name: String,
}

impl Principal {
    /// How the principal appears in audit events.
    pub fn actor(&self) -> String {
        self.id.clone()
    }

    /// Platform owner or admin: may see and operate clusters and nodes.
    pub fn require_platform(&self) -> Result<()> {
        match self.kind {
            Kind::PlatformOwner | Kind::PlatformAdmin => Ok(()),
            Kind::OrgAdmin(_) => Err(Error::PermissionDenied(
                "platform objects are for platform-owner and platform-admin principals".into(),
            )),
        }
    }

    /// Platform owner only.
    pub fn require_owner(&self) -> Result<()> {
        match self.kind {
            Kind::PlatformOwner => Ok(()),
            _ => Err(Error::PermissionDenied(
                "only a platform-owner may do this".into(),
            )),
        }
    }

    /// Platform principals, or the admin of `org_id`.
    pub fn require_org(&self, org_id: &str) -> Result<()> {
        match &self.kind {
            Kind::PlatformOwner | Kind::PlatformAdmin => Ok(()),
            Kind::OrgAdmin(own) if own == org_id => Ok(()),
            Kind::OrgAdmin(_) => Err(Error::PermissionDenied(
                "an org-admin sees only its own organization".into(),
            )),
        }
    }
}

/// The principal a bearer token belongs to. Missing, malformed, unknown,
/// revoked or expired tokens and disabled principals are `UNAUTHENTICATED`.
pub async fn authenticate(pool: &PgPool, authorization: Option<&str>) -> Result<Principal> {
    let header = authorization.ok_or_else(|| {
        Error::Unauthenticated("no bearer token (authorization: Bearer rapat.…)".into())
    })?;
    if header.len() > AUTHORIZATION_BYTES_MAX {
        return Err(Error::Unauthenticated(
            "authorization header too long".into(),
        ));
    }
    let raw = header
        .strip_prefix("Bearer ")
        .ok_or_else(|| Error::Unauthenticated("authorization is not a Bearer token".into()))?;
    let (id, hash) = secret::parse(API_TOKEN_PREFIX, raw)
        .ok_or_else(|| Error::Unauthenticated("malformed API token".into()))?;
    type TokenRow = (Vec<u8>, String, String, Option<String>, String, bool);
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT t.token_hash, p.principal_id, p.kind, p.org_id, p.name,
                (t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())
                 AND p.status = 'active')
           FROM admin_api_tokens t JOIN admin_principals p USING (principal_id)
          WHERE t.token_id = $1",
    )
    .bind(&id)
    .fetch_optional(pool)
    .await?;
    let Some((stored, principal_id, kind, org, name, usable)) = row else {
        return Err(Error::Unauthenticated("unknown API token".into()));
    };
    if !secret::hash_matches(&hash, &stored) {
        return Err(Error::Unauthenticated("unknown API token".into()));
    }
    if !usable {
        return Err(Error::Unauthenticated(
            "API token revoked or expired, or principal disabled".into(),
        ));
    }
    Ok(Principal {
        id: principal_id,
        kind: Kind::parse(&kind, org.as_deref())?,
        name,
    })
}

/// Creates a principal and its first token; returns the raw token (shown
/// once).
pub async fn create_principal(
    conn: &mut sqlx::PgConnection,
    principal_id: &str,
    kind: &Kind,
    name: &str,
) -> Result<String> {
    rap_proto::ids::NodeId::new(principal_id)
        .map_err(|e| Error::invalid(format!("principal id: {e}")))?;
    if name.len() > crate::limits::TEXT_BYTES_MAX {
        return Err(Error::Oversize {
            what: "principal name",
            limit: crate::limits::TEXT_BYTES_MAX,
            got: name.len(),
        });
    }
    let org = match kind {
        Kind::OrgAdmin(org) => Some(org.as_str()),
        _ => None,
    };
    let inserted = sqlx::query(
        "INSERT INTO admin_principals (principal_id, kind, org_id, name)
         VALUES ($1, $2, $3, $4) ON CONFLICT (principal_id) DO NOTHING",
    )
    .bind(principal_id)
    .bind(kind.name())
    .bind(org)
    .bind(name)
    .execute(&mut *conn)
    .await
    .map_err(|e| foreign_key_to_not_found(e, "organization", org.unwrap_or("")))?
    .rows_affected();
    if inserted == 0 {
        return Err(Error::AlreadyExists {
            kind: "principal",
            id: principal_id.to_string(),
        });
    }
    let token = secret::generate::<{ crate::limits::API_TOKEN_SECRET_BYTES }>(API_TOKEN_PREFIX)?;
    sqlx::query(
        "INSERT INTO admin_api_tokens (token_id, principal_id, token_hash) VALUES ($1, $2, $3)",
    )
    .bind(&token.id)
    .bind(principal_id)
    .bind(&token.hash[..])
    .execute(&mut *conn)
    .await?;
    Ok(token.raw)
}

/// `init`: creates the first platform owner when there is none and returns
/// its raw token; `None` when an owner exists already (nothing changes).
pub async fn create_first_owner(pool: &PgPool) -> Result<Option<String>> {
    let mut tx = pool.begin().await?;
    // One init at a time.
    sqlx::query("LOCK TABLE admin_principals IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM admin_principals WHERE kind = 'platform-owner')",
    )
    .fetch_one(&mut *tx)
    .await?;
    if exists {
        return Ok(None);
    }
    let raw = create_principal(
        &mut tx,
        FIRST_OWNER_ID,
        &Kind::PlatformOwner,
        "first platform owner",
    )
    .await?;
    crate::audit::record_ok(
        &mut tx,
        &crate::audit::Action::new(
            "rap-controlplane-init",
            "principal.create",
            None,
            FIRST_OWNER_ID,
        ),
        None,
        serde_json::json!({"kind": "platform-owner"}),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(raw))
}

/// Maps a foreign-key violation to `NOT_FOUND` of `kind`.
pub fn foreign_key_to_not_found(error: sqlx::Error, kind: &'static str, id: &str) -> Error {
    if let sqlx::Error::Database(db) = &error
        && db.code().as_deref() == Some("23503")
    {
        return Error::not_found(kind, id);
    }
    Error::Database(error)
}
