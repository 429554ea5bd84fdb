//! `rapctl migrate`: applies the control plane's schema migrations to its
//! PostgreSQL database directly (not over gRPC), with the same step as
//! `rap-controlplane migrate` ([`rap_controlplane_server::migrate`]).

use crate::output::Format;
use crate::table::print_object;
use anyhow::Result;
use serde_json::json;

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
    let migrated = rap_controlplane_server::migrate(&args.database_url).await?;
    match format {
        Format::Json => print_object(
            format,
            &[],
            &json!({"applied": migrated.applied, "schema_version": migrated.schema_version}),
        ),
        Format::Table => crate::outln!("{migrated}"),
    }
    Ok(())
}
