//! The package of the `rap-controlplane` binary (`src/main.rs`: `init`,
//! `serve`, `migrate`, `owner-token`).
//!
//! Its library holds what the binary shares with `rapctl`: [`migrate`],
//! the one implementation of "apply the schema migrations to this
//! database", behind both `rap-controlplane migrate` and `rapctl migrate`.

use std::fmt;

/// Connections the migration pool opens.
const MIGRATE_POOL_CONNECTIONS: u32 = 2;

/// What a migration run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migrated {
    /// Migrations applied by this run (0 when the schema was current).
    pub applied: usize,
    /// Migrations the binary knows, i.e. the schema version afterwards.
    pub schema_version: usize,
}

impl fmt::Display for Migrated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "applied {} migration(s); schema at version {}",
            self.applied, self.schema_version
        )
    }
}

/// Why [`migrate`] failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database could not be reached or refused the login.
    #[error("cannot connect to the database (check --database-url / RAP_DATABASE_URL)")]
    Connect(#[source] rap_controlplane::Error),
    /// A migration failed; the schema is as far as the last one applied.
    #[error("applying migrations failed")]
    Apply(#[source] rap_controlplane::Error),
}

/// Connects to `database_url`, applies the pending schema migrations and
/// closes the connections again.
pub async fn migrate(database_url: &str) -> Result<Migrated, MigrateError> {
    let pool = rap_controlplane::db::connect(database_url, MIGRATE_POOL_CONNECTIONS)
        .await
        .map_err(MigrateError::Connect)?;
    let applied = rap_controlplane::db::migrate(&pool).await;
    pool.close().await;
    Ok(Migrated {
        applied: applied.map_err(MigrateError::Apply)?,
        schema_version: rap_controlplane::db::known_migrations(),
    })
}
