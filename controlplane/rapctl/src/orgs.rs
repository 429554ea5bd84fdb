//! `rapctl org|principal|whoami`: tenants, the people who administer them
//! (principals, their API tokens, disabling them), and who the current
//! token belongs to.

use crate::client::{self, Conn, Session, all_pages, page};
use crate::output::Format;
use crate::table::{Table, or_dash, print_list, print_object, time};
use anyhow::{Result, bail};
use rap_controlplane::limits::API_TOKEN_TTL_MAX;
use rap_proto::pb;
use serde_json::{Value, json};

/// `rapctl org ...`.
#[derive(clap::Args, Debug)]
pub struct OrgArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: OrgCommand,
}

/// Direction of an organization endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum EndpointKind {
    /// Traffic enters the network here.
    Ingress,
    /// Traffic leaves the network here.
    Egress,
}

impl EndpointKind {
    fn wire(self) -> &'static str {
        match self {
            EndpointKind::Ingress => "ingress",
            EndpointKind::Egress => "egress",
        }
    }
}

/// Organization commands (platform owner only, except `view`).
#[derive(clap::Subcommand, Debug)]
enum OrgCommand {
    /// Create an organization (a tenant).
    Create {
        /// The organization id (a-z, 0-9, '-').
        org_id: String,
        /// A human-readable name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List organizations.
    List,
    /// Add a logical endpoint an organization may use ("Office Moscow"),
    /// served by the nodes holding --role in --cluster.
    EndpointAdd {
        /// The organization.
        #[arg(long)]
        org: String,
        /// The cluster serving it.
        #[arg(long)]
        cluster: String,
        /// The endpoint's name as the organization sees it.
        #[arg(long)]
        name: String,
        /// Ingress or egress.
        #[arg(long, value_enum)]
        kind: EndpointKind,
        /// The role whose nodes serve it (e.g. entry-node, vpn-exit).
        #[arg(long)]
        role: String,
    },
    /// What an org admin sees of an organization: logical endpoints and
    /// services with their status (no nodes, no topology).
    View {
        /// The organization id.
        org_id: String,
    },
}

/// `rapctl principal ...`.
#[derive(clap::Args, Debug)]
pub struct PrincipalArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: PrincipalCommand,
}

/// What a principal may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PrincipalKind {
    /// Everything, including organizations and principals.
    PlatformOwner,
    /// Operates clusters and nodes.
    PlatformAdmin,
    /// Sees its own organization's safe projection (needs --org).
    OrgAdmin,
}

impl PrincipalKind {
    fn wire(self) -> &'static str {
        match self {
            PrincipalKind::PlatformOwner => "platform-owner",
            PrincipalKind::PlatformAdmin => "platform-admin",
            PrincipalKind::OrgAdmin => "org-admin",
        }
    }
}

/// Principal commands (platform owner only, except `token list` and
/// `token revoke` of one's own tokens).
#[derive(clap::Subcommand, Debug)]
enum PrincipalCommand {
    /// Create a principal and its API token; prints the raw token ONCE.
    Create {
        /// The principal id.
        principal_id: String,
        /// What it may do.
        #[arg(long, value_enum)]
        kind: PrincipalKind,
        /// Its organization (org-admin only, and required for it).
        #[arg(long)]
        org: Option<String>,
        /// A human-readable name.
        #[arg(long)]
        name: Option<String>,
    },
    /// API tokens (`rapat.…`) of principals: list, create, revoke. Join
    /// tokens for nodes are `rapctl token`.
    Token {
        #[command(subcommand)]
        command: ApiTokenCommand,
    },
    /// Disable a principal: its API tokens are refused (PRINCIPAL_DISABLED)
    /// until it is enabled. The last active platform-owner cannot be
    /// disabled.
    Disable {
        /// The principal id.
        principal_id: String,
        /// Why (recorded in the audit log).
        #[arg(long, required = true)]
        reason: String,
    },
    /// Enable a disabled principal: its unexpired, unrevoked tokens work
    /// again.
    Enable {
        /// The principal id.
        principal_id: String,
    },
    /// List principals with their status and TOTP enrolment (platform
    /// owner only).
    List,
    /// Your TOTP second factor: enroll, confirm. With it, high-risk
    /// commands need `rapctl step-up` first.
    Totp {
        #[command(subcommand)]
        command: crate::totp::TotpCommand,
    },
}

/// API token commands.
#[derive(clap::Subcommand, Debug)]
enum ApiTokenCommand {
    /// List API tokens (never their secrets): your own; a platform owner
    /// sees everyone's, or one principal's with --principal.
    List {
        /// Only this principal's tokens.
        #[arg(long)]
        principal: Option<String>,
    },
    /// Create an API token for a principal (platform owner only); prints
    /// the raw token ONCE.
    Create {
        /// The principal the token authenticates as.
        principal_id: String,
        /// How long it stays valid: 30m, 12h, 90d, ... (at most 365d).
        #[arg(long, default_value = "90d", value_parser = parse_api_token_ttl)]
        ttl: u64,
    },
    /// Revoke an API token at once (your own, or any for a platform owner).
    Revoke {
        /// The token id (the middle part of rapat.<id>.<secret>).
        token_id: String,
    },
}

fn parse_api_token_ttl(text: &str) -> Result<u64, String> {
    crate::cluster::parse_duration_at_most(text, API_TOKEN_TTL_MAX)
}

fn api_token_json(t: &pb::ApiToken) -> Value {
    json!({
        "token_id": t.token_id,
        "principal_id": t.principal_id,
        "status": t.status,
        "created_by": t.created_by,
        "created_at_unix_ms": t.created_at_unix_ms,
        "expires_at_unix_ms": t.expires_at_unix_ms,
        "revoked_at_unix_ms": t.revoked_at_unix_ms,
        "revoked_by": t.revoked_by,
        "last_used_at_unix_ms": t.last_used_at_unix_ms,
    })
}

fn api_token_rows(t: &pb::ApiToken) -> Vec<(&'static str, String)> {
    vec![
        ("token id", t.token_id.clone()),
        ("principal", t.principal_id.clone()),
        ("status", or_dash(&t.status)),
        ("expires", time(t.expires_at_unix_ms)),
        ("last used", time(t.last_used_at_unix_ms)),
        ("created", time(t.created_at_unix_ms)),
        ("created by", or_dash(&t.created_by)),
        ("revoked", time(t.revoked_at_unix_ms)),
        ("revoked by", or_dash(&t.revoked_by)),
    ]
}

fn principal_state_output(format: Format, state: pb::PrincipalState) {
    let principal = state.principal.unwrap_or_default();
    let mut rows = principal_rows(&principal);
    rows.push(("status", or_dash(&state.status)));
    let json = json!({"principal": principal_json(&principal), "status": state.status});
    print_object(format, &rows, &json);
}

/// `rapctl whoami`.
#[derive(clap::Args, Debug)]
pub struct WhoamiArgs {
    #[command(flatten)]
    conn: Conn,
}

fn principal_json(p: &pb::Principal) -> Value {
    json!({
        "principal_id": p.principal_id,
        "kind": p.kind,
        "org_id": p.org_id,
        "name": p.name,
        "totp_enrolled": p.totp_enrolled,
        "stepped_up": p.stepped_up,
    })
}

fn principal_rows(p: &pb::Principal) -> Vec<(&'static str, String)> {
    vec![
        ("principal", p.principal_id.clone()),
        ("kind", or_dash(&p.kind)),
        ("org", or_dash(&p.org_id)),
        ("name", or_dash(&p.name)),
        (
            "totp",
            if p.totp_enrolled { "enrolled" } else { "-" }.into(),
        ),
        ("stepped up", if p.stepped_up { "yes" } else { "no" }.into()),
    ]
}

fn org_json(o: &pb::Organization) -> Value {
    json!({"org_id": o.org_id, "name": o.name, "created_at_unix_ms": o.created_at_unix_ms})
}

/// Runs `rapctl org ...`.
pub async fn run_org(args: OrgArgs, format: Format) -> Result<()> {
    let s = client::connect(&args.conn, "org").await?;
    match args.command {
        OrgCommand::Create { org_id, name } => {
            let o = s
                .client
                .clone()
                .create_organization(pb::CreateOrganizationRequest {
                    org_id,
                    name: name.unwrap_or_default(),
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            let rows = [
                ("org", o.org_id.clone()),
                ("name", or_dash(&o.name)),
                ("created", time(o.created_at_unix_ms)),
            ];
            print_object(format, &rows, &org_json(&o));
        }
        OrgCommand::List => {
            let orgs = all_pages(async |token| {
                let response = s
                    .client
                    .clone()
                    .list_organizations(pb::ListOrganizationsRequest { page: page(&token) })
                    .await
                    .map_err(|e| s.fail(e))?
                    .into_inner();
                Ok((response.organizations, response.next_page_token))
            })
            .await?;
            let mut table = Table::new(&["ORG", "NAME", "CREATED"]);
            for o in &orgs {
                table.row(vec![
                    o.org_id.clone(),
                    or_dash(&o.name),
                    time(o.created_at_unix_ms),
                ]);
            }
            let json = json!({"organizations": orgs.iter().map(org_json).collect::<Vec<_>>()});
            print_list(format, &table, &json);
        }
        OrgCommand::EndpointAdd {
            org,
            cluster,
            name,
            kind,
            role,
        } => {
            let e = s
                .client
                .clone()
                .add_org_endpoint(pb::AddOrgEndpointRequest {
                    org_id: org,
                    cluster_id: cluster,
                    name,
                    kind: kind.wire().to_string(),
                    role,
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            let rows = [
                ("org", e.org_id.clone()),
                ("cluster", e.cluster_id.clone()),
                ("name", e.name.clone()),
                ("kind", or_dash(&e.kind)),
                ("role", or_dash(&e.role)),
            ];
            let json = json!({
                "org_id": e.org_id,
                "cluster_id": e.cluster_id,
                "name": e.name,
                "kind": e.kind,
                "role": e.role,
            });
            print_object(format, &rows, &json);
        }
        OrgCommand::View { org_id } => {
            let v = s
                .client
                .clone()
                .get_org_view(pb::GetOrgViewRequest { org_id })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            print_org_view(format, &v);
        }
    }
    Ok(())
}

fn print_org_view(format: Format, v: &pb::OrgView) {
    let json = json!({
        "org_id": v.org_id,
        "name": v.name,
        "endpoints": v.endpoints.iter().map(|e| json!({
            "name": e.name, "kind": e.kind, "cluster_id": e.cluster_id, "status": e.status,
        })).collect::<Vec<_>>(),
        "services": v.services.iter().map(|x| json!({
            "service": x.service, "status": x.status,
        })).collect::<Vec<_>>(),
    });
    if format == Format::Json {
        crate::outln!("{json:#}");
        return;
    }
    print_object(
        format,
        &[("org", v.org_id.clone()), ("name", or_dash(&v.name))],
        &json,
    );
    crate::outln!();
    let mut endpoints = Table::new(&["ENDPOINT", "KIND", "CLUSTER", "STATUS"]);
    for e in &v.endpoints {
        endpoints.row(vec![
            e.name.clone(),
            or_dash(&e.kind),
            or_dash(&e.cluster_id),
            or_dash(&e.status),
        ]);
    }
    endpoints.print();
    crate::outln!();
    let mut services = Table::new(&["SERVICE", "STATUS"]);
    for x in &v.services {
        services.row(vec![x.service.clone(), or_dash(&x.status)]);
    }
    services.print();
}

/// Runs `rapctl principal ...`.
pub async fn run_principal(args: PrincipalArgs, format: Format) -> Result<()> {
    match args.command {
        PrincipalCommand::Create {
            principal_id,
            kind,
            org,
            name,
        } => {
            match (kind, &org) {
                (PrincipalKind::OrgAdmin, None) => bail!("an org-admin needs --org <org-id>"),
                (PrincipalKind::PlatformOwner | PrincipalKind::PlatformAdmin, Some(_)) => {
                    bail!("--org is only for --kind org-admin")
                }
                _ => {}
            }
            let s = client::connect(&args.conn, "principal").await?;
            let response = s
                .client
                .clone()
                .create_principal(pb::CreatePrincipalRequest {
                    principal_id,
                    kind: kind.wire().to_string(),
                    org_id: org.unwrap_or_default(),
                    name: name.unwrap_or_default(),
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            warn_api_token_shown_once();
            let principal = response.principal.unwrap_or_default();
            let mut rows = vec![("token", response.raw_token.clone())];
            rows.extend(principal_rows(&principal));
            let json = json!({
                "raw_token": response.raw_token,
                "principal": principal_json(&principal),
            });
            print_object(format, &rows, &json);
        }
        PrincipalCommand::Token { command } => {
            let s = client::connect(&args.conn, "principal").await?;
            run_api_token(&s, command, format).await?;
        }
        PrincipalCommand::Disable {
            principal_id,
            reason,
        } => {
            let s = client::connect(&args.conn, "principal").await?;
            let state = s
                .client
                .clone()
                .disable_principal(pb::DisablePrincipalRequest {
                    principal_id,
                    reason,
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            principal_state_output(format, state);
        }
        PrincipalCommand::Enable { principal_id } => {
            let s = client::connect(&args.conn, "principal").await?;
            let state = s
                .client
                .clone()
                .enable_principal(pb::EnablePrincipalRequest { principal_id })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            principal_state_output(format, state);
        }
        PrincipalCommand::List => {
            let s = client::connect(&args.conn, "principal").await?;
            let listed = all_pages(async |token| {
                let response = s
                    .client
                    .clone()
                    .list_principals(pb::ListPrincipalsRequest { page: page(&token) })
                    .await
                    .map_err(|e| s.fail(e))?
                    .into_inner();
                Ok((response.principals, response.next_page_token))
            })
            .await?;
            let mut table = Table::new(&["PRINCIPAL", "KIND", "ORG", "NAME", "STATUS", "TOTP"]);
            let mut rows = Vec::new();
            for state in &listed {
                let p = state.principal.clone().unwrap_or_default();
                table.row(vec![
                    p.principal_id.clone(),
                    or_dash(&p.kind),
                    or_dash(&p.org_id),
                    or_dash(&p.name),
                    or_dash(&state.status),
                    if p.totp_enrolled { "enrolled" } else { "-" }.into(),
                ]);
                let mut row = principal_json(&p);
                if let Some(fields) = row.as_object_mut() {
                    // A listing says nothing of anyone's token.
                    fields.remove("stepped_up");
                    fields.insert("status".into(), json!(state.status));
                }
                rows.push(row);
            }
            print_list(format, &table, &json!({"principals": rows}));
        }
        PrincipalCommand::Totp { command } => {
            let s = client::connect(&args.conn, "principal").await?;
            crate::totp::run_totp(&s, command, format).await?;
        }
    }
    Ok(())
}

async fn run_api_token(s: &Session, command: ApiTokenCommand, format: Format) -> Result<()> {
    match command {
        ApiTokenCommand::List { principal } => {
            let principal = principal.unwrap_or_default();
            let tokens = all_pages(async |token| {
                let response = s
                    .client
                    .clone()
                    .list_api_tokens(pb::ListApiTokensRequest {
                        principal_id: principal.clone(),
                        page: page(&token),
                    })
                    .await
                    .map_err(|e| s.fail(e))?
                    .into_inner();
                Ok((response.tokens, response.next_page_token))
            })
            .await?;
            let mut table = Table::new(&[
                "TOKEN ID",
                "PRINCIPAL",
                "STATUS",
                "EXPIRES",
                "LAST USED",
                "CREATED BY",
            ]);
            for t in &tokens {
                table.row(vec![
                    t.token_id.clone(),
                    t.principal_id.clone(),
                    or_dash(&t.status),
                    time(t.expires_at_unix_ms),
                    time(t.last_used_at_unix_ms),
                    or_dash(&t.created_by),
                ]);
            }
            let json = json!({"tokens": tokens.iter().map(api_token_json).collect::<Vec<_>>()});
            print_list(format, &table, &json);
        }
        ApiTokenCommand::Create { principal_id, ttl } => {
            let response = s
                .client
                .clone()
                .create_api_token(pb::CreateApiTokenRequest {
                    principal_id,
                    ttl_seconds: ttl,
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            warn_api_token_shown_once();
            let token = response.token.unwrap_or_default();
            let mut rows = vec![("token", response.raw_token.clone())];
            rows.extend(api_token_rows(&token));
            let json = json!({"raw_token": response.raw_token, "token": api_token_json(&token)});
            print_object(format, &rows, &json);
        }
        ApiTokenCommand::Revoke { token_id } => {
            let token = s
                .client
                .clone()
                .revoke_api_token(pb::RevokeApiTokenRequest { token_id })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            print_object(format, &api_token_rows(&token), &api_token_json(&token));
        }
    }
    Ok(())
}

/// Runs `rapctl whoami`.
pub async fn run_whoami(args: WhoamiArgs, format: Format) -> Result<()> {
    let s = client::connect(&args.conn, "whoami").await?;
    let p = s
        .client
        .clone()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map_err(|e| s.fail(e))?
        .into_inner();
    print_object(format, &principal_rows(&p), &principal_json(&p));
    Ok(())
}

/// Said before printing a new API token.
fn warn_api_token_shown_once() {
    eprintln!(
        "warning: the API token below is shown once and never stored; give it to its \
         holder over a private channel (they save it to ~/.config/rap/token, mode 0600)"
    );
}
