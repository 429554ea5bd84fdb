//! Organizations (tenants), their logical endpoints, admin principals, and
//! the org-safe projection (seed Golden Rules 5–7).
//!
//! An org-admin sees only [`org_view`] of its own organization: logical
//! endpoint names ("office-moscow") and services, each with a safe status
//! (`available`, `degraded`, `unavailable`). The projection never contains
//! node ids, storage nodes, fences, authority terms, CA fingerprints,
//! partition internals or anything of another organization: it is built
//! from counts only, and only the org's own rows are read into it.

use crate::audit::{self, Action};
use crate::auth::{self, Kind, Principal};
use crate::clusters::require_exists;
use crate::context::Context;
use crate::db;
use crate::error::{Error, Result};
use crate::limits::TEXT_BYTES_MAX;
use crate::page::Page;
use crate::roles::{known_roles, required_capability};
use rap_proto::envelope::Scope;
use rap_proto::ids::{ClusterId, OrgId, RoleName};
use rap_proto::pb;
use std::collections::BTreeMap;
use std::time::Duration;

/// Audit action of an organization's creation.
pub const ACTION_CREATE_ORG: &str = "org.create";
/// Audit action of adding an endpoint.
pub const ACTION_ADD_ENDPOINT: &str = "org.endpoint.add";
/// Audit action of a principal's creation.
pub const ACTION_CREATE_PRINCIPAL: &str = "principal.create";
/// Audit action of a (refused) org view.
pub const ACTION_VIEW: &str = "org.view";
/// Audit action of a (refused) organization list.
pub const ACTION_LIST_ORGS: &str = "org.list";
/// A node counts as healthy when its latest heartbeat says `healthy` and
/// arrived within this window.
pub const HEALTHY_HEARTBEAT_WINDOW: Duration = Duration::from_secs(60);
/// Longest endpoint name (the schema checks the same).
pub const ENDPOINT_NAME_BYTES_MAX: usize = 100;
/// Endpoint kinds.
pub const ENDPOINT_KINDS: &[&str] = &["ingress", "egress"];
/// Most endpoints one organization may have (its view lists them all).
pub const ENDPOINTS_PER_ORG_MAX: i64 = 1_000;

/// Safe status: at least one serving node is healthy.
pub const STATUS_AVAILABLE: &str = "available";
/// Safe status: serving nodes exist, none is healthy.
pub const STATUS_DEGRADED: &str = "degraded";
/// Safe status: no node serves it.
pub const STATUS_UNAVAILABLE: &str = "unavailable";

fn org_pb(row: db::orgs::Organization) -> pb::Organization {
    pb::Organization {
        org_id: row.org_id,
        name: row.name,
        created_at_unix_ms: row.created_at_unix_ms,
    }
}

/// The wire form of a principal.
pub fn principal_pb(principal: &Principal) -> pb::Principal {
    pb::Principal {
        principal_id: principal.id.clone(),
        kind: principal.kind.name().to_string(),
        org_id: match &principal.kind {
            Kind::OrgAdmin(org) => org.clone(),
            _ => String::new(),
        },
        name: principal.name.clone(),
        totp_enrolled: principal.totp_enrolled,
        stepped_up: principal.stepped_up,
    }
}

fn check_text(what: &'static str, value: &str, limit: usize) -> Result<()> {
    if value.len() > limit {
        return Err(Error::Oversize {
            what,
            limit,
            got: value.len(),
        });
    }
    Ok(())
}

/// Creates an organization (platform-owner only; audited).
pub async fn create_org(
    ctx: &Context,
    principal: &Principal,
    request: &pb::CreateOrganizationRequest,
) -> Result<pb::Organization> {
    let action = Action::new(
        principal.actor(),
        ACTION_CREATE_ORG,
        None,
        request.org_id.as_str(),
    );
    let result = async {
        principal.require_owner()?;
        let org = OrgId::new(request.org_id.as_str())?;
        let name = if request.name.trim().is_empty() {
            org.as_str()
        } else {
            request.name.as_str()
        };
        check_text("organization name", name, TEXT_BYTES_MAX)?;
        let mut tx = ctx.pool.begin().await?;
        let Some(row) = db::orgs::insert(&mut tx, org.as_str(), name).await? else {
            return Err(Error::AlreadyExists {
                kind: "organization",
                id: org.to_string(),
            });
        };
        audit::record_ok(&mut tx, &action, None, serde_json::json!({"name": name})).await?;
        tx.commit().await?;
        Ok(org_pb(row))
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// Lists organizations: all of them for platform principals, only its own
/// for an org-admin.
pub async fn list_orgs(
    ctx: &Context,
    principal: &Principal,
    request: &pb::ListOrganizationsRequest,
) -> Result<pb::ListOrganizationsResponse> {
    let action = Action::new(principal.actor(), ACTION_LIST_ORGS, None, "");
    let result = async {
        let page = Page::from_pb(request.page.as_ref());
        let only: Option<&str> = match &principal.kind {
            Kind::PlatformOwner | Kind::PlatformAdmin => None,
            Kind::OrgAdmin(org) => Some(org.as_str()),
        };
        let mut conn = ctx.pool.acquire().await?;
        let rows = db::orgs::list(&mut conn, only, &page.after, page.limit()).await?;
        let mut organizations: Vec<pb::Organization> = rows.into_iter().map(org_pb).collect();
        let next_page_token = page.finish(&mut organizations, |o| o.org_id.clone());
        Ok(pb::ListOrganizationsResponse {
            organizations,
            next_page_token,
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// Adds a logical endpoint to an organization (platform principals;
/// audited). `kind` is `ingress` or `egress`; `role` must be a known role
/// (the role whose nodes serve the endpoint). The organization and the
/// cluster must exist.
pub async fn add_endpoint(
    ctx: &Context,
    principal: &Principal,
    request: &pb::AddOrgEndpointRequest,
) -> Result<pb::OrgEndpoint> {
    let cluster = ClusterId::new(request.cluster_id.as_str()).ok();
    let action = Action::new(
        principal.actor(),
        ACTION_ADD_ENDPOINT,
        cluster.as_ref().map(ClusterId::as_str),
        format!("{}/{}", request.org_id, request.name),
    );
    let result = async {
        principal.require_platform()?;
        let org = OrgId::new(request.org_id.as_str())?;
        let cluster = ClusterId::new(request.cluster_id.as_str())?;
        let name = request.name.trim();
        if name.is_empty() {
            return Err(Error::invalid("an endpoint needs a name"));
        }
        check_text("endpoint name", name, ENDPOINT_NAME_BYTES_MAX)?;
        if name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "an endpoint name may not contain control characters",
            ));
        }
        if !ENDPOINT_KINDS.contains(&request.kind.as_str()) {
            return Err(Error::invalid(format!(
                "endpoint kind {:?} is not one of {}",
                audit::cut(&request.kind, 40),
                ENDPOINT_KINDS.join(", ")
            )));
        }
        let role = RoleName::new(request.role.as_str())?;
        if required_capability(role.as_str()).is_none() {
            return Err(Error::invalid(format!(
                "unknown role {:?}; known roles: {}",
                role.as_str(),
                known_roles()
            )));
        }
        let mut tx = ctx.pool.begin().await?;
        if !db::orgs::exists(&mut tx, org.as_str()).await? {
            return Err(Error::not_found("organization", org.as_str()));
        }
        require_exists(&mut tx, cluster.as_str()).await?;
        let count = db::orgs::endpoint_count(&mut tx, org.as_str()).await?;
        if count >= ENDPOINTS_PER_ORG_MAX {
            return Err(Error::FailedPrecondition(format!(
                "organization {org} has {count} endpoints, the limit is {ENDPOINTS_PER_ORG_MAX}"
            )));
        }
        let endpoint = db::orgs::Endpoint {
            name: name.to_string(),
            kind: request.kind.clone(),
            cluster_id: cluster.as_str().to_string(),
            role: role.as_str().to_string(),
        };
        if !db::orgs::insert_endpoint(&mut tx, org.as_str(), &endpoint).await? {
            return Err(Error::AlreadyExists {
                kind: "org endpoint",
                id: format!("{org}/{cluster}/{name}"),
            });
        }
        crate::snapshots::mark(
            &mut tx,
            cluster.as_str(),
            &[Scope::Role(role.clone()), Scope::OrgServices(org.clone())],
        )
        .await?;
        audit::record_ok(
            &mut tx,
            &action,
            None,
            serde_json::json!({"kind": request.kind, "role": role.as_str()}),
        )
        .await?;
        tx.commit().await?;
        Ok(pb::OrgEndpoint {
            org_id: org.to_string(),
            cluster_id: cluster.to_string(),
            name: name.to_string(),
            kind: request.kind.clone(),
            role: role.to_string(),
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// Creates an admin principal and its first API token (platform-owner
/// only). The raw token is in the response only: the audit event records
/// the principal's id, kind and org, never the token.
pub async fn create_principal(
    ctx: &Context,
    principal: &Principal,
    request: &pb::CreatePrincipalRequest,
) -> Result<pb::CreatePrincipalResponse> {
    let action = Action::new(
        principal.actor(),
        ACTION_CREATE_PRINCIPAL,
        None,
        request.principal_id.as_str(),
    )
    .with_step_up(principal);
    let result = async {
        principal.require_owner()?;
        let kind = Kind::parse(&request.kind, Some(request.org_id.as_str()))?;
        let mut tx = ctx.pool.begin().await?;
        let raw_token = auth::create_principal_by(
            &mut tx,
            &request.principal_id,
            &kind,
            &request.name,
            &principal.actor(),
        )
        .await?;
        let org_id = match &kind {
            Kind::OrgAdmin(org) => org.clone(),
            _ => String::new(),
        };
        audit::record_ok(
            &mut tx,
            &action,
            None,
            serde_json::json!({"kind": kind.name(), "org_id": org_id}),
        )
        .await?;
        tx.commit().await?;
        let created = Principal::stored(&request.principal_id, kind, request.name.clone());
        Ok(pb::CreatePrincipalResponse {
            principal: Some(principal_pb(&created)),
            raw_token,
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// The caller as the API sees it.
pub async fn whoami(
    _ctx: &Context,
    principal: &Principal,
    _request: &pb::WhoAmIRequest,
) -> Result<pb::Principal> {
    Ok(principal_pb(principal))
}

/// How many nodes serve `role` for `org_id` in `cluster_id`, and how many
/// of them are healthy. Serving nodes: active assignments of the role
/// restricted to the org or unrestricted, of enrolled nodes with an active
/// membership.
async fn serving_nodes(
    conn: &mut sqlx::PgConnection,
    cluster_id: &str,
    role: &str,
    org_id: &str,
) -> Result<(i64, i64)> {
    let counted =
        db::orgs::serving(conn, cluster_id, role, org_id, HEALTHY_HEARTBEAT_WINDOW).await?;
    Ok((counted.serving, counted.healthy))
}

/// The safe status of `serving` nodes of which `healthy` are healthy.
pub fn safe_status(serving: i64, healthy: i64) -> &'static str {
    if healthy > 0 {
        STATUS_AVAILABLE
    } else if serving > 0 {
        STATUS_DEGRADED
    } else {
        STATUS_UNAVAILABLE
    }
}

/// Rank of a status: the best of several wins.
fn rank(status: &str) -> u8 {
    match status {
        STATUS_AVAILABLE => 2,
        STATUS_DEGRADED => 1,
        _ => 0,
    }
}

/// THE ORG-SAFE PROJECTION. Platform principals and the org-admin of
/// `org_id` only; anyone else is `PERMISSION_DENIED`, audited as a refused
/// `org.view`. Endpoints: every logical endpoint of the org, with a status
/// from the nodes holding the endpoint's role for the org in its cluster
/// (assignments restricted to the org, plus unrestricted ones): available
/// when one of them is healthy (heartbeat `healthy` within
/// [`HEALTHY_HEARTBEAT_WINDOW`]), degraded when some exist but none is
/// healthy, unavailable when none exists. Services: every role the org has
/// nodes assigned to (assignments restricted to the org), with the best
/// status over the clusters it is assigned in, computed the same way.
/// Nothing else: no node ids, counts, topology, fences or trust material.
/// An org-admin may leave `org_id` empty to mean its own organization.
pub async fn org_view(
    ctx: &Context,
    principal: &Principal,
    request: &pb::GetOrgViewRequest,
) -> Result<pb::OrgView> {
    // An org-admin asking for no org in particular means its own.
    let requested = match (&principal.kind, request.org_id.as_str()) {
        (Kind::OrgAdmin(own), "") => own.as_str(),
        (_, org) => org,
    };
    let action = Action::new(principal.actor(), ACTION_VIEW, None, requested);
    let result = async {
        // Authorization first: another org's id is neither validated nor
        // looked up, so a refusal tells nothing about it.
        principal.require_org(requested)?;
        let org = OrgId::new(requested)?;
        let org_id = org.as_str();
        let mut conn = ctx.pool.acquire().await?;
        let Some(name) = db::orgs::name(&mut conn, org_id).await? else {
            return Err(Error::not_found("organization", org_id));
        };
        let endpoint_rows = db::orgs::endpoints(&mut conn, org_id, ENDPOINTS_PER_ORG_MAX).await?;
        let mut endpoints = Vec::with_capacity(endpoint_rows.len());
        for db::orgs::Endpoint {
            name,
            kind,
            cluster_id,
            role,
        } in endpoint_rows
        {
            let (serving, healthy) = serving_nodes(&mut conn, &cluster_id, &role, org_id).await?;
            endpoints.push(pb::OrgEndpointStatus {
                name,
                kind,
                cluster_id,
                status: safe_status(serving, healthy).to_string(),
            });
        }
        let service_rows = db::orgs::assigned_roles(&mut conn, org_id).await?;
        let mut best: BTreeMap<String, &'static str> = BTreeMap::new();
        for db::orgs::AssignedRole { cluster_id, role } in service_rows {
            let (serving, healthy) = serving_nodes(&mut conn, &cluster_id, &role, org_id).await?;
            let status = safe_status(serving, healthy);
            let entry = best.entry(role).or_insert(STATUS_UNAVAILABLE);
            if rank(status) > rank(entry) {
                *entry = status;
            }
        }
        let services = best
            .into_iter()
            .map(|(service, status)| pb::OrgServiceStatus {
                service,
                status: status.to_string(),
            })
            .collect();
        Ok(pb::OrgView {
            org_id: org_id.to_string(),
            name,
            endpoints,
            services,
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_status_is_available_degraded_or_unavailable() {
        assert_eq!(safe_status(3, 1), STATUS_AVAILABLE);
        assert_eq!(safe_status(3, 0), STATUS_DEGRADED);
        assert_eq!(safe_status(0, 0), STATUS_UNAVAILABLE);
        assert!(rank(STATUS_AVAILABLE) > rank(STATUS_DEGRADED));
        assert!(rank(STATUS_DEGRADED) > rank(STATUS_UNAVAILABLE));
    }
}
