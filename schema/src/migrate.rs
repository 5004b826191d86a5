//! Embedded migrations, run by `worker migrate` as the owner role.

use diesel_async::{AsyncMigrationHarness, AsyncPgConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

#[derive(Debug, thiserror::Error)]
#[error("migration failed: {0}")]
pub struct MigrationError(String);

/// Applies every pending migration; returns the versions applied (empty: already up to date).
/// Needs a multi-threaded tokio runtime (the harness blocks in place).
pub fn run_pending(conn: AsyncPgConnection) -> Result<Vec<String>, MigrationError> {
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| MigrationError(e.to_string()))?;
    Ok(applied.iter().map(ToString::to_string).collect())
}

/// Reverts every applied migration, newest first (tests and emergency roll-backs).
pub fn revert_all(conn: AsyncPgConnection) -> Result<Vec<String>, MigrationError> {
    let mut harness = AsyncMigrationHarness::new(conn);
    let reverted = harness
        .revert_all_migrations(MIGRATIONS)
        .map_err(|e| MigrationError(e.to_string()))?;
    Ok(reverted.iter().map(ToString::to_string).collect())
}
