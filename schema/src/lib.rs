//! Postgres schema, tenant-scoped data access and the token vault.
//!
//! Error policy: this crate returns typed errors (`thiserror`); binaries and job bodies wrap
//! them with context (`anyhow`) and log them once, at the boundary.

pub mod accounts;
pub mod comments;
mod connect;
pub mod conversations;
mod db;
pub mod deletion;
pub mod events;
pub mod merchants;
pub mod migrate;
pub mod outbound;
pub mod prepared;
pub mod products;
pub mod schema;
pub mod text_enum;
pub mod vault;

pub use connect::PgConnector;
pub use db::{
    Committed, Db, DbError, MerchantId, StartupError, TENANT_TABLES, TenantWork, check_app_role,
    commit, establish,
};
pub use vault::{TokenRow, Vault, VaultError};
