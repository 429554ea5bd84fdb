//! `rap-controlplane`: run the control plane, or prepare it.
//!
//! `init` applies the schema, creates the platform CA and prints the first
//! platform-owner API token (once). `serve` runs the gRPC and HTTP
//! listeners. `migrate` applies the schema only. Storage nodes are not
//! issued certificates here: they enrol with `rap-configstore join` (their
//! keys never leave them).

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use rap_controlplane::keys::PlatformKeys;
use rap_controlplane::server::{CONFIG_BYTES_MAX, Config, LogFormat};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// RAP control plane: PostgreSQL-backed enrollment, trust and policy.
#[derive(Parser, Debug)]
#[command(name = "rap-controlplane", version = rap_core::VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply the schema, create the platform CA, and print the first
    /// platform-owner API token (only when there is no owner yet).
    Init(CommonArgs),
    /// Run the control plane (gRPC + /metrics, /healthz, /readyz).
    Serve(ServeArgs),
    /// Apply pending schema migrations and exit.
    Migrate(CommonArgs),
    /// Break glass: print a new API token for an active platform-owner
    /// (direct database access, like init; audited). For when every owner
    /// token has expired or was revoked; otherwise use
    /// `rapctl principal token create`.
    OwnerToken(OwnerTokenArgs),
    /// Break glass: remove a principal's TOTP second factor (direct
    /// database access; audited). For a principal that lost its
    /// authenticator; it enrols again with `rapctl principal totp enroll`.
    ResetTotp(ResetTotpArgs),
    #[command(flatten)]
    Docs(rap_core::cli_docs::DocsCommand),
}

#[derive(Args, Debug)]
struct ResetTotpArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The principal.
    #[arg(long)]
    principal: String,
}

#[derive(Args, Debug)]
struct OwnerTokenArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The platform-owner principal.
    #[arg(long, default_value = rap_controlplane::auth::FIRST_OWNER_ID)]
    principal: String,
    /// Token lifetime in days (default 90, at most 365).
    #[arg(long, default_value_t = 90,
          value_parser = clap::value_parser!(u64).range(1..=365))]
    ttl_days: u64,
}

#[derive(Args, Debug, Clone)]
struct CommonArgs {
    /// TOML config file; flags and RAP_* environment variables override it.
    #[arg(long, env = "RAP_CONFIG")]
    config: Option<PathBuf>,
    /// PostgreSQL URL.
    #[arg(long, env = "RAP_DATABASE_URL")]
    database_url: Option<String>,
    /// Directory of the platform CA, cluster CAs and signing keys (0600).
    #[arg(long, env = "RAP_KEYS_DIR")]
    keys_dir: Option<PathBuf>,
    /// DNS names or IPs of the control plane's server certificate
    /// (repeatable; localhost and 127.0.0.1 are always included).
    #[arg(long = "server-name", env = "RAP_SERVER_NAMES", value_delimiter = ',')]
    server_names: Vec<String>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// gRPC listen address.
    #[arg(long, env = "RAP_LISTEN")]
    listen: Option<SocketAddr>,
    /// HTTP listen address for /metrics, /healthz, /readyz.
    #[arg(long, env = "RAP_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// HTTPS listen address of the web console (off unless set).
    #[arg(long, env = "RAP_CONSOLE_LISTEN")]
    console_listen: Option<SocketAddr>,
    /// host:port agents dial (written into join commands).
    #[arg(long, env = "RAP_PUBLIC_ENDPOINT")]
    public_endpoint: Option<String>,
    /// Development only: serve gRPC without TLS (refused on a non-loopback
    /// --listen unless --insecure-plaintext-allow-non-loopback).
    #[arg(long, env = "RAP_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// DANGEROUS: let --insecure-plaintext listen on a non-loopback
    /// address (tokens cross the network in clear text; logged at WARN).
    #[arg(long, env = "RAP_INSECURE_PLAINTEXT_ALLOW_NON_LOOPBACK")]
    insecure_plaintext_allow_non_loopback: bool,
    /// Development only: dial storage nodes without TLS.
    #[arg(long, env = "RAP_STORAGE_INSECURE_PLAINTEXT")]
    storage_insecure_plaintext: bool,
    /// Log format: text, or json (one object per line).
    #[arg(long, env = "RAP_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Every principal needs a TOTP step-up for high-risk calls (without
    /// it, only principals that enrolled TOTP are asked).
    #[arg(long, env = "RAP_REQUIRE_STEP_UP")]
    require_step_up: bool,
}

fn main() -> ExitCode {
    rap_core::process::run_main(run(Cli::parse()))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init(args) => init(args).await,
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::OwnerToken(args) => owner_token(args).await,
        Command::ResetTotp(args) => reset_totp(args).await,
        Command::Docs(docs) => Ok(docs.run(<Cli as clap::CommandFactory>::command())?),
    }
}

fn load_config(args: &CommonArgs) -> Result<Config> {
    let mut config = match &args.config {
        Some(path) => {
            let text = rap_core::files::read_config_file(path, CONFIG_BYTES_MAX)?;
            Config::from_toml(&text).with_context(|| format!("parse {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(v) = &args.database_url {
        config.database_url = v.clone();
    }
    if let Some(v) = &args.keys_dir {
        config.keys_dir = v.clone();
    }
    if !args.server_names.is_empty() {
        config.server_names = args.server_names.clone();
    }
    Ok(config)
}

fn out(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

async fn init(args: CommonArgs) -> Result<()> {
    init_logging(LogFormat::Text);
    let config = load_config(&args)?;
    config.validate()?;
    let pool = rap_controlplane::db::connect(&config.database_url, 2).await?;
    let applied = rap_controlplane::db::migrate(&pool).await?;
    rap_core::tls::install_crypto_provider();
    let platform = PlatformKeys::create_or_load(&config.keys_dir, &config.server_names)?;
    let ca_path = platform.dir().join("ca.pem");
    out(&format!("schema: {applied} migration(s) applied"));
    out(&format!(
        "platform CA: {} (fingerprint {})",
        ca_path.display(),
        platform.ca_fingerprint()
    ));
    match rap_controlplane::auth::create_first_owner(&pool).await? {
        Some(token) => {
            out(&format!(
                "first platform-owner API token (shown once, store it now; expires in {} days, \
                 `rapctl principal token create {}` makes the next one):",
                rap_controlplane::limits::API_TOKEN_TTL_DEFAULT.as_secs() / 86_400,
                rap_controlplane::auth::FIRST_OWNER_ID
            ));
            out(&format!("  {token}"));
            out("save it for rapctl:");
            out(&format!(
                "  mkdir -p ~/.config/rap && umask 077 && echo '{token}' > ~/.config/rap/token"
            ));
            out(&format!("  export RAP_CA={}", ca_path.display()));
        }
        None => out("a platform owner exists already; no token printed (nothing changed)"),
    }
    Ok(())
}

async fn migrate(args: CommonArgs) -> Result<()> {
    let config = load_config(&args)?;
    config.validate()?;
    let migrated = rap_controlplane_server::migrate(&config.database_url).await?;
    out(&migrated.to_string());
    Ok(())
}

async fn owner_token(args: OwnerTokenArgs) -> Result<()> {
    init_logging(LogFormat::Text);
    let config = load_config(&args.common)?;
    config.validate()?;
    let pool = rap_controlplane::db::connect(&config.database_url, 2).await?;
    rap_controlplane::db::migrate(&pool).await?;
    let ttl = std::time::Duration::from_secs(args.ttl_days * 86_400);
    let token = rap_controlplane::auth::issue_owner_token(&pool, &args.principal, ttl).await?;
    out(&format!(
        "new API token of platform-owner {} (shown once, expires in {} days):",
        args.principal, args.ttl_days
    ));
    out(&format!("  {token}"));
    Ok(())
}

async fn reset_totp(args: ResetTotpArgs) -> Result<()> {
    init_logging(LogFormat::Text);
    let config = load_config(&args.common)?;
    config.validate()?;
    let pool = rap_controlplane::db::connect(&config.database_url, 2).await?;
    rap_controlplane::db::migrate(&pool).await?;
    let had = rap_controlplane::principals::reset_totp(&pool, &args.principal).await?;
    out(&if had {
        format!(
            "TOTP of principal {} removed; it enrols again with `rapctl principal totp enroll`",
            args.principal
        )
    } else {
        format!("principal {} had no TOTP; nothing changed", args.principal)
    });
    Ok(())
}

/// The control plane's default log filter (`RUST_LOG` overrides it).
const LOG_FILTER_DEFAULT: &str = "info,sqlx=warn";

/// Installs the logs. The control plane serves many clusters: a line
/// about one carries its `cluster_id` from the event or its span.
fn init_logging(format: LogFormat) {
    rap_core::logging::init(format, LOG_FILTER_DEFAULT, &[]);
}

async fn serve(args: ServeArgs) -> Result<()> {
    let mut config = load_config(&args.common)?;
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.http_listen {
        config.http_listen = v;
    }
    if let Some(v) = args.console_listen {
        config.console_listen = Some(v);
    }
    if let Some(v) = &args.public_endpoint {
        config.public_endpoint = Some(v.clone());
    }
    if args.insecure_plaintext {
        config.insecure_plaintext = true;
    }
    if args.insecure_plaintext_allow_non_loopback {
        config.insecure_plaintext_allow_non_loopback = true;
    }
    if args.storage_insecure_plaintext {
        config.storage_insecure_plaintext = true;
    }
    if args.require_step_up {
        config.require_step_up = true;
    }
    if let Some(v) = args.log_format {
        config.log_format = v;
    }
    init_logging(config.log_format);
    rap_controlplane::server::serve(config, rap_core::process::shutdown_signal()).await?;
    Ok(())
}
