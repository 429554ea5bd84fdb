//! The PostgreSQL pool and the schema migrations (`migrations/` at the
//! workspace root, embedded at build time).

pub mod audit;
pub mod authority_terms;
pub mod clusters;
pub mod groups;
pub mod heartbeats;
pub mod join;
pub mod nodes;
pub mod orgs;
pub mod partitions;
pub mod principals;
pub mod roles;
pub mod snapshots;
pub mod storage_nodes;
pub mod workloads;

use crate::error::Result;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// The embedded migrations (forward-only, numbered).
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Opens a pool to `url` (not yet migrated).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await?)
}

/// Applies every pending migration; returns how many were applied.
pub async fn migrate(pool: &PgPool) -> Result<usize> {
    let before: i64 = applied(pool).await?;
    MIGRATOR.run(pool).await?;
    let after: i64 = applied(pool).await?;
    Ok(usize::try_from(after - before).unwrap_or(0))
}

/// One round trip to the database (`SELECT 1`), for readiness checks.
pub async fn ping(pool: &PgPool) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

/// How many migrations this binary knows.
pub fn known_migrations() -> usize {
    MIGRATOR.iter().count()
}

async fn applied(pool: &PgPool) -> Result<i64> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE tablename = '_sqlx_migrations')",
    )
    .fetch_one(pool)
    .await?;
    if !exists {
        return Ok(0);
    }
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?,
    )
}
