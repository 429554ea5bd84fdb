//! `rapctl`: the operator CLI of the RAP config/storage service.
//!
//! Human tables by default, `-o json` for scripts. Exit codes: 0 ok,
//! 1 error (including a refused envelope or a refused call), 2 usage.
//!
//! `snapshot` and `demo` work offline; `dev` starts and stops a local
//! platform (processes in the background); the other commands call the control
//! plane's `AdminService` (see [`client`]) from a current-thread tokio
//! runtime built here, and `migrate` talks to PostgreSQL directly.

mod audit;
mod authority;
mod certs;
mod client;
mod cluster;
mod demo;
mod dev;
mod errors;
mod join_requests;
mod migrate;
mod nodes;
mod orgs;
mod output;
mod overview;
mod placement;
mod published;
mod snapshot;
mod table;
mod totp;

use clap::{Parser, Subcommand};
use output::Format;
use std::process::ExitCode;

/// Operate the RAP config/storage service.
///
/// Control-plane commands (cluster, authority, token, join-request, node,
/// role, group, service, audit, org, principal, whoami) call
/// `rap-controlplane serve` at --endpoint with the API token in
/// --token-file. `snapshot` and `demo` work offline on signed snapshot
/// envelopes. `dev up` / `dev down` run a local platform for development.
#[derive(Parser, Debug)]
#[command(name = "rapctl", version = rap_core::VERSION, about, long_about)]
struct Cli {
    /// Output format: `table` for people, `json` for scripts.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    output: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The platform at a glance: every cluster's state and the risks.
    Overview(overview::OverviewArgs),
    /// Create, list, show and bootstrap clusters.
    Cluster(cluster::ClusterArgs),
    /// A cluster's authority group: status, promotion after loss of
    /// quorum, rejoin of a retired storage node.
    Authority(authority::AuthorityArgs),
    /// Create, list and revoke join tokens.
    Token(cluster::TokenArgs),
    /// Review join requests: list, show, approve, reject.
    JoinRequest(join_requests::JoinRequestArgs),
    /// List, show and revoke enrolled nodes.
    Node(nodes::NodeArgs),
    /// Assign, remove and list node roles.
    Role(nodes::RoleArgs),
    /// Create inventory groups, move nodes and groups, show the tree.
    Group(nodes::GroupArgs),
    /// Set and list the desired state of services on nodes.
    Service(nodes::ServiceArgs),
    /// List and tail the audit log.
    Audit(audit::AuditArgs),
    /// Certificates: which expire soon.
    Certs(certs::CertsArgs),
    /// Organizations (tenants) and their logical endpoints.
    Org(orgs::OrgArgs),
    /// Create principals (people or automation) and their API tokens.
    Principal(orgs::PrincipalArgs),
    /// Show who the API token belongs to.
    Whoami(orgs::WhoamiArgs),
    /// Step up with a TOTP code: high-risk commands work for 5 minutes.
    StepUp(totp::StepUpArgs),
    /// Apply the control plane's database migrations (direct to PostgreSQL).
    Migrate(migrate::MigrateArgs),
    /// Create keys, sign, inspect and verify signed snapshot envelopes.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// A scripted tour of the signed-snapshot rules; exits 0 when every
    /// step behaved as the design says.
    Demo(demo::DemoArgs),
    /// A complete local platform in the background: `dev up` starts (or
    /// resumes) PostgreSQL, the control plane, storage voters and agents;
    /// `dev down` stops them.
    Dev(dev::DevArgs),
    #[command(flatten)]
    Docs(rap_core::cli_docs::DocsCommand),
}

/// Runs `future` to completion on a current-thread runtime.
fn block_on(future: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(future)
}

/// Prints `error` for a person: `error: CODE: message` and a `hint:` line
/// for control-plane failures, the cause chain otherwise.
fn report(error: &anyhow::Error) {
    match error.downcast_ref::<errors::CliError>() {
        Some(failure) => {
            eprintln!("error: {failure}");
            if let Some(hint) = &failure.hint {
                eprintln!("hint: {hint}");
            }
        }
        None => eprintln!("error: {error:#}"),
    }
}

/// Runs one parsed command line.
fn run(cli: Cli) -> anyhow::Result<()> {
    let format = cli.output;
    match cli.command {
        Command::Snapshot(command) => snapshot::run(command, format),
        Command::Demo(args) => demo::run(args, format),
        Command::Dev(args) => dev::run(args, format),
        Command::Docs(docs) => Ok(docs.run(<Cli as clap::CommandFactory>::command())?),
        Command::Overview(args) => block_on(overview::run_overview(args, format)),
        Command::Cluster(args) => block_on(cluster::run_cluster(args, format)),
        Command::Authority(args) => block_on(authority::run_authority(args, format)),
        Command::Token(args) => block_on(cluster::run_token(args, format)),
        Command::JoinRequest(args) => block_on(join_requests::run_join_request(args, format)),
        Command::Node(args) => block_on(nodes::run_node(args, format)),
        Command::Role(args) => block_on(nodes::run_role(args, format)),
        Command::Group(args) => block_on(nodes::run_group(args, format)),
        Command::Service(args) => block_on(nodes::run_service(args, format)),
        Command::Audit(args) => block_on(audit::run_audit(args, format)),
        Command::Certs(args) => block_on(certs::run_certs(args, format)),
        Command::Org(args) => block_on(orgs::run_org(args, format)),
        Command::Principal(args) => block_on(orgs::run_principal(args, format)),
        Command::Whoami(args) => block_on(orgs::run_whoami(args, format)),
        Command::StepUp(args) => block_on(totp::run_step_up(args, format)),
        Command::Migrate(args) => block_on(migrate::run_migrate(args, format)),
    }
}

/// Whether `result` is a refusal for want of a step-up.
fn needs_step_up(result: &anyhow::Result<()>) -> bool {
    result
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<errors::CliError>())
        .is_some_and(|e| e.code == rap_core::codes::STEP_UP_REQUIRED)
}

fn main() -> ExitCode {
    use std::io::IsTerminal as _;
    let mut result = run(Cli::parse());
    // At a terminal, a refusal for want of a step-up asks for the code and
    // runs the command again (the refusal changed nothing).
    if needs_step_up(&result)
        && std::io::stdin().is_terminal()
        && std::io::stderr().is_terminal()
        && let Some(conn) = client::last_conn()
    {
        result = block_on(totp::prompt_step_up(conn)).and_then(|()| run(Cli::parse()));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error);
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn connection_options_work_at_every_level() {
        let cli = Cli::try_parse_from([
            "rapctl",
            "cluster",
            "--endpoint",
            "http://127.0.0.1:1",
            "list",
            "--token-file",
            "/t",
            "-o",
            "json",
        ])
        .expect("parse");
        assert_eq!(cli.output, Format::Json);
        assert!(matches!(cli.command, Command::Cluster(_)));
    }

    #[test]
    fn usage_errors_are_caught_by_clap() {
        let bad: &[&[&str]] = &[
            &["rapctl", "join-request", "reject", "jr1"],
            &[
                "rapctl",
                "token",
                "create",
                "--cluster",
                "c1",
                "--ttl",
                "1w",
            ],
            &[
                "rapctl",
                "token",
                "create",
                "--cluster",
                "c1",
                "--max-uses",
                "0",
            ],
            &["rapctl", "cluster", "bootstrap", "c1"],
            &["rapctl", "cluster", "bootstrap", "c1", "--voter", "s1"],
            &["rapctl", "group", "move", "--cluster", "c1", "--to", "g"],
            &[
                "rapctl",
                "group",
                "move",
                "--cluster",
                "c1",
                "--to",
                "g",
                "--node",
                "n",
                "--group",
                "h",
            ],
            &[
                "rapctl",
                "service",
                "set",
                "--cluster",
                "c",
                "--node",
                "n",
                "--service",
                "s",
                "--state",
                "on",
            ],
            &["rapctl", "principal", "create", "p", "--kind", "root"],
            &["rapctl", "node", "revoke", "--cluster", "c", "n1"],
            &["rapctl", "principal", "disable", "p1"],
            &[
                "rapctl",
                "principal",
                "token",
                "create",
                "p1",
                "--ttl",
                "366d",
            ],
            &["rapctl", "principal", "token", "create", "p1", "--ttl", "0"],
            &["rapctl", "principal", "token", "revoke"],
        ];
        for args in bad {
            assert!(Cli::try_parse_from(*args).is_err(), "{args:?} was accepted");
        }
    }
}
