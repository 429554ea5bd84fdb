//! `rapctl migrate`: applies the control plane's schema migrations to its
//! PostgreSQL database directly (not over gRPC).

use crate::output::Format;
use crate::table::print_object;
use anyhow::{Context, Result};
use serde_json::json;

/// Connections the migration pool opens.
const MIGRATE_POOL_CONNECTIONS: u32 = 2;

/// `rapctl migrate`.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// PostgreSQL URL of the control plane database
    /// (postgres://user:password@host:port/db).
    #[arg(long, env = "RAP_DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

/// Runs `rapctl migrate`.
pub async fn run_migrate(args: MigrateArgs, format: Format) -> Result<()> {
    let pool = rap_controlplane::db::connect(&args.database_url, MIGRATE_POOL_CONNECTIONS)
        .await
        .context("cannot connect to the database (check --database-url / RAP_DATABASE_URL)")?;
    let applied = rap_controlplane::db::migrate(&pool)
        .await
        .context("applying migrations failed")?;
    pool.close().await;
    let version = rap_controlplane::db::known_migrations();
    match format {
        Format::Json => print_object(
            format,
            &[],
            &json!({"applied": applied, "schema_version": version}),
        ),
        Format::Table => {
            crate::outln!("applied {applied} migration(s); schema at version {version}")
        }
    }
    Ok(())
}
