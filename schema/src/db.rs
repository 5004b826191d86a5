//! The tenant-scoped data access layer.
//!
//! The pool is private. The only way to run a query is [`Db::as_merchant`], which opens a
//! transaction, sets the merchant context (`set_merchant_context`, transaction-local) and only
//! then hands the connection to the caller; or one of the few id-only resolver calls, which go
//! through `SECURITY DEFINER` functions. A transaction whose future is dropped half-way leaves
//! its connection marked as in-transaction, and bb8 then discards it instead of reusing it.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::TransactionDepthChange;
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::pooled_connection::bb8::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{
    AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    TransactionManager,
};
use igsales_config::DbSettings;

use crate::connect::PgConnector;
use crate::prepared::PreparedExt;
use uuid::Uuid;

/// Every table that holds tenant rows. The schema tests check this list against the database.
pub const TENANT_TABLES: &[&str] = &[
    "merchants",
    "instagram_accounts",
    "webhook_events",
    "conversations",
    "messages",
    "outbound_messages",
    "products",
    "product_words",
    "comment_rules",
    "product_links",
];

/// A merchant (tenant) id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MerchantId(pub Uuid);

impl MerchantId {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl fmt::Display for MerchantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MerchantId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no Postgres connection could be had within {0:?}")]
    Unavailable(Duration),
    #[error("Postgres connection failed: {0}")]
    Connect(String),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

impl DbError {
    /// Postgres could not be reached (as opposed to a query that failed): callers answer 503.
    /// Also a server that is failing over: read-only (a standby, or a primary being demoted),
    /// in recovery, starting up or shutting down, or a connection cut under a query.
    pub fn is_unavailable(&self) -> bool {
        use diesel::result::{DatabaseErrorKind as K, Error as E};
        match self {
            DbError::Unavailable(_) | DbError::Connect(_) => true,
            DbError::Query(E::DatabaseError(K::ClosedConnection | K::ReadOnlyTransaction, _)) => {
                true
            }
            DbError::Query(E::DatabaseError(_, info)) => {
                let m = info.message().to_ascii_lowercase();
                [
                    "read-only transaction",
                    "recovery",
                    "starting up",
                    "shutting down",
                    "terminating connection",
                    "connection closed",
                    "connection reset",
                    "broken pipe",
                    "server closed the connection",
                ]
                .iter()
                .any(|s| m.contains(s))
            }
            _ => false,
        }
    }
}

/// Why a command refuses to start against this database.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "Postgres is unreachable at {location} ({var}): {reason}. Start PostgreSQL or point {var} at a running server; on a TLS or certificate error, check its sslmode and sslrootcert."
    )]
    Unreachable {
        var: &'static str,
        location: String,
        reason: String,
    },
    #[error(
        "refusing to run as Postgres role \"{role}\": it {why}, which bypasses row-level security. Connect as a login role that is a member of igsales_app and owns nothing (CREATE ROLE igsales_login LOGIN PASSWORD '…' IN ROLE igsales_app;) and set DATABASE_URL to it; the owner belongs in MIGRATION_DATABASE_URL, used only by `worker migrate`."
    )]
    BypassesRls { role: String, why: String },
    #[error(
        "the database is not migrated (missing: {missing}). Run `worker migrate` with MIGRATION_DATABASE_URL set to the owner role first."
    )]
    NotMigrated { missing: String },
    #[error("checking the database role failed: {0}")]
    Check(#[from] diesel::result::Error),
}

/// Implemented by every `async` closure whose future can be named, so that [`Db::as_merchant`]
/// can require that future to be `Send` (an `AsyncFnOnce` bound alone cannot say so).
pub trait TenantWork<T, R>:
    AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as TenantWork<T, R>>::Fut
{
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> TenantWork<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

#[derive(QueryableByName)]
struct MerchantRow {
    #[diesel(sql_type = sql_types::Uuid)]
    merchant_id: Uuid,
}

#[derive(QueryableByName)]
struct DueRow {
    #[diesel(sql_type = sql_types::Uuid)]
    merchant_id: Uuid,
    #[diesel(sql_type = sql_types::Text)]
    instagram_page_id: String,
}

#[derive(QueryableByName)]
struct RoleRow {
    #[diesel(sql_type = sql_types::Text)]
    role: String,
    #[diesel(sql_type = sql_types::Bool)]
    is_super: bool,
    #[diesel(sql_type = sql_types::Bool)]
    bypass_rls: bool,
    #[diesel(sql_type = sql_types::Array<sql_types::Text>)]
    owned: Vec<String>,
    #[diesel(sql_type = sql_types::Array<sql_types::Text>)]
    missing: Vec<String>,
}

/// Opens one connection with the session settings every app connection carries.
pub async fn establish(settings: &DbSettings) -> Result<AsyncPgConnection, DbError> {
    establish_with(&PgConnector::new(&settings.url)?, settings).await
}

async fn establish_with(
    connector: &PgConnector,
    settings: &DbSettings,
) -> Result<AsyncPgConnection, DbError> {
    let mut conn = connector.connect(settings.pool.connect_timeout).await?;
    conn.batch_execute(&format!(
        "SET statement_timeout = {}; SET idle_in_transaction_session_timeout = {}",
        settings.pool.statement_timeout.as_millis(),
        settings.pool.idle_in_transaction_timeout.as_millis()
    ))
    .await?;
    Ok(conn)
}

/// The cause of a failed connect without the URL (tokio-postgres never prints it, but a
/// `BadConnection` message could in principle carry user input).
pub(crate) fn connection_reason(e: &diesel::ConnectionError) -> String {
    match e {
        diesel::ConnectionError::BadConnection(msg) => msg.clone(),
        diesel::ConnectionError::InvalidConnectionUrl(_) => "invalid connection URL".to_owned(),
        other => other.to_string(),
    }
}

/// Refuses roles for which RLS would not apply: superusers, `BYPASSRLS`, and owners (or members
/// of the owner) of any tenant table. Also notices an unmigrated database.
pub async fn check_app_role(conn: &mut AsyncPgConnection) -> Result<(), StartupError> {
    let tables: Vec<String> = TENANT_TABLES.iter().map(|t| (*t).to_owned()).collect();
    let row: RoleRow = diesel::sql_query(
        "SELECT current_user::text AS role, r.rolsuper AS is_super, r.rolbypassrls AS bypass_rls,
           coalesce((SELECT array_agg(c.relname::text ORDER BY c.relname)
                     FROM pg_catalog.pg_class c
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = 'public' AND c.relname = ANY($1)
                       AND pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER')),
                    '{}') AS owned,
           coalesce((SELECT array_agg(t ORDER BY t) FROM unnest($1::text[]) AS t
                     WHERE pg_catalog.to_regclass('public.' || quote_ident(t)) IS NULL),
                    '{}') AS missing
         FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
    )
    .bind::<sql_types::Array<sql_types::Text>, _>(&tables)
    .get_result(conn)
    .await?;
    let why = if row.is_super {
        Some("is a superuser".to_owned())
    } else if row.bypass_rls {
        Some("has BYPASSRLS".to_owned())
    } else if !row.owned.is_empty() {
        Some(format!("owns the tenant tables ({})", row.owned.join(", ")))
    } else {
        None
    };
    if let Some(why) = why {
        return Err(StartupError::BypassesRls {
            role: row.role,
            why,
        });
    }
    if !row.missing.is_empty() {
        return Err(StartupError::NotMigrated {
            missing: row.missing.join(", "),
        });
    }
    Ok(())
}

/// The app's database handle: cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool<AsyncPgConnection>,
    checkout_timeout: Duration,
}

impl Db {
    /// Connects once (for a clear error and the role check), then builds the pool.
    pub async fn connect(settings: &DbSettings) -> Result<Db, StartupError> {
        let mut first = establish(settings)
            .await
            .map_err(|e| StartupError::Unreachable {
                var: "DATABASE_URL",
                location: settings.url.location(),
                reason: match e {
                    DbError::Connect(reason) => reason,
                    other => other.to_string(),
                },
            })?;
        check_app_role(&mut first).await?;
        drop(first);
        Ok(Self::pool(settings))
    }

    /// Builds the pool without connecting; connections are made on first use.
    pub fn pool(settings: &DbSettings) -> Db {
        let setup_settings = settings.clone();
        // Built on the first connect and then shared: a bad sslrootcert shows up there, as a
        // connect error, and the trust store is read once.
        let connector = Arc::new(tokio::sync::OnceCell::<PgConnector>::new());
        let mut config = ManagerConfig::default();
        config.custom_setup = Box::new(move |_url| {
            let s = setup_settings.clone();
            let connector = connector.clone();
            Box::pin(async move {
                let made = connector
                    .get_or_try_init(|| async { PgConnector::new(&s.url) })
                    .await;
                let connected = match made {
                    Ok(c) => establish_with(c, &s).await,
                    Err(e) => Err(e),
                };
                connected.map_err(|e| match e {
                    DbError::Query(q) => diesel::ConnectionError::CouldntSetupConfiguration(q),
                    other => diesel::ConnectionError::BadConnection(other.to_string()),
                })
            })
        });
        // No query per checkout: the context is transaction-local (it cannot outlive its
        // transaction; the RLS tests check it), and a connection left inside a transaction is
        // discarded by the pool's broken-connection check, not recycled.
        config.recycling_method = RecyclingMethod::Fast;
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
            settings.url.expose(),
            config,
        );
        let pool = Pool::builder()
            .max_size(settings.pool.size)
            .connection_timeout(settings.pool.connect_timeout)
            .idle_timeout(Some(Duration::from_secs(300)))
            .build_unchecked(manager);
        Db {
            pool,
            checkout_timeout: settings.pool.connect_timeout,
        }
    }

    pub(crate) async fn checkout(
        &self,
    ) -> Result<
        diesel_async::pooled_connection::bb8::PooledConnection<'_, AsyncPgConnection>,
        DbError,
    > {
        self.pool.get().await.map_err(|e| match e {
            bb8::RunError::TimedOut => DbError::Unavailable(self.checkout_timeout),
            bb8::RunError::User(e) => DbError::Connect(e.to_string()),
        })
    }

    /// Runs `work` in a transaction whose merchant context is `merchant`. Commits on `Ok`, rolls
    /// back on `Err`. If this future is dropped mid-way the connection is discarded, never reused.
    ///
    /// `work` gets a shared connection so it can pipeline independent statements
    /// (`futures::try_join!`); the connection keeps them in the order they were first polled.
    pub async fn as_merchant<R, E, F>(&self, merchant: MerchantId, work: F) -> Result<R, E>
    where
        for<'c> F: AsyncFnOnce(&'c AsyncPgConnection) -> Result<R, E>
            + TenantWork<&'c AsyncPgConnection, Result<R, E>, Fut: Send>
            + Send,
        E: From<DbError> + Send,
        R: Send,
    {
        let mut conn = self.checkout().await?;
        let conn: &mut AsyncPgConnection = &mut conn;
        let error = match begin_and_run(conn, merchant, work).await {
            Ok(value) => {
                AnsiTransactionManager::commit_transaction(conn)
                    .await
                    .map_err(DbError::from)?;
                return Ok(value);
            }
            Err(e) => e,
        };
        // A failed rollback leaves the transaction manager broken: bb8 drops the connection.
        // The first error is the one worth reporting.
        let _ = AnsiTransactionManager::rollback_transaction(conn).await;
        Err(error)
    }

    /// [`Db::as_merchant`] for work that sends its own COMMIT in the same flight as its last
    /// statements ([`commit`]), saving the round trip a separate COMMIT costs. The [`Committed`]
    /// it must return can only come from a COMMIT that Postgres answered.
    pub async fn as_merchant_committed<R, E, F>(
        &self,
        merchant: MerchantId,
        work: F,
    ) -> Result<R, E>
    where
        for<'c> F: AsyncFnOnce(&'c AsyncPgConnection) -> Result<(R, Committed), E>
            + TenantWork<&'c AsyncPgConnection, Result<(R, Committed), E>, Fut: Send>
            + Send,
        E: From<DbError> + Send,
        R: Send,
    {
        let mut conn = self.checkout().await?;
        let conn: &mut AsyncPgConnection = &mut conn;
        let error = match begin_and_run(conn, merchant, work).await {
            Ok((value, Committed(()))) => {
                // Postgres ended the transaction; the manager learns it here.
                AnsiTransactionManager::transaction_manager_status_mut(conn)
                    .transaction_state()
                    .and_then(|s| s.change_transaction_depth(TransactionDepthChange::DecreaseDepth))
                    .map_err(|e| E::from(DbError::from(e)))?;
                return Ok(value);
            }
            Err(e) => e,
        };
        // After a pipelined COMMIT that ended an aborted transaction, this ROLLBACK only draws
        // a warning; before one, it ends the transaction.
        let _ = AnsiTransactionManager::rollback_transaction(conn).await;
        Err(error)
    }

    /// Instagram account id → merchant, through the `SECURITY DEFINER` resolver.
    pub async fn merchant_for_instagram_account(
        &self,
        instagram_account_id: &str,
    ) -> Result<Option<MerchantId>, DbError> {
        let mut conn = self.checkout().await?;
        let row: Option<Option<Uuid>> =
            diesel::select(merchant_for_instagram_account(instagram_account_id))
                .get_result(&mut conn)
                .await
                .optional()?;
        Ok(row.flatten().map(MerchantId))
    }

    /// Every merchant id (for crons and `keys rotate`, which then work merchant by merchant).
    pub async fn merchant_ids(&self) -> Result<Vec<MerchantId>, DbError> {
        let mut conn = self.checkout().await?;
        let rows: Vec<MerchantRow> =
            diesel::sql_query("SELECT merchant_id FROM merchant_ids() AS merchant_id")
                .load(&mut conn)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| MerchantId(r.merchant_id))
            .collect())
    }

    /// Accounts whose token expires before `expiring_before` and was last refreshed (or
    /// connected) before `refreshed_before`.
    pub async fn accounts_due_for_token_refresh(
        &self,
        expiring_before: chrono::DateTime<chrono::Utc>,
        refreshed_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<(MerchantId, String)>, DbError> {
        let mut conn = self.checkout().await?;
        let rows: Vec<DueRow> = diesel::sql_query(
            "SELECT merchant_id, instagram_page_id FROM accounts_due_for_token_refresh($1, $2)",
        )
        .bind::<sql_types::Timestamptz, _>(expiring_before)
        .bind::<sql_types::Timestamptz, _>(refreshed_before)
        .load(&mut conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (MerchantId(r.merchant_id), r.instagram_page_id))
            .collect())
    }

    /// Accounts that a Meta user id names, as professional account id or app-scoped id.
    pub async fn accounts_for_meta_user(
        &self,
        user_id: &str,
    ) -> Result<Vec<(MerchantId, String)>, DbError> {
        let mut conn = self.checkout().await?;
        let rows: Vec<DueRow> = diesel::sql_query(
            "SELECT merchant_id, instagram_page_id FROM accounts_for_meta_user($1)",
        )
        .bind::<sql_types::Text, _>(user_id)
        .load(&mut conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (MerchantId(r.merchant_id), r.instagram_page_id))
            .collect())
    }

    /// Merchants that have a conversation with this customer.
    pub async fn merchants_with_customer(
        &self,
        customer_igsid: &str,
    ) -> Result<Vec<MerchantId>, DbError> {
        let mut conn = self.checkout().await?;
        let rows: Vec<MerchantRow> =
            diesel::sql_query("SELECT merchant_id FROM merchants_with_customer($1) AS merchant_id")
                .bind::<sql_types::Text, _>(customer_igsid)
                .load(&mut conn)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| MerchantId(r.merchant_id))
            .collect())
    }

    /// `SELECT 1` through the pool, for readiness probes.
    pub async fn ping(&self) -> Result<(), DbError> {
        let mut conn = self.checkout().await?;
        diesel::sql_query("SELECT 1").execute(&mut conn).await?;
        Ok(())
    }

    /// A raw pooled connection for tests that must look at what the pool hands out (context
    /// leaks, discarded connections). Not for application code.
    #[cfg(feature = "testing")]
    pub async fn raw_connection_for_tests(
        &self,
    ) -> Result<
        diesel_async::pooled_connection::bb8::PooledConnection<'_, AsyncPgConnection>,
        DbError,
    > {
        self.checkout().await
    }
}

/// Opens the transaction and runs `work` in it. The transaction manager counts the
/// transaction before BEGIN goes out: from then on a dropped future leaves a connection the
/// pool discards. BEGIN and the context (a typed UUID, safe to inline) go out first and the
/// work's first statements right behind them, in the same flight. Should BEGIN fail, those
/// statements fail as well: in an aborted transaction, or outside one with no context, where
/// RLS shows nothing and refuses every write; its error is the one returned.
async fn begin_and_run<T, E, F>(
    conn: &mut AsyncPgConnection,
    merchant: MerchantId,
    work: F,
) -> Result<T, E>
where
    for<'c> F: AsyncFnOnce(&'c AsyncPgConnection) -> Result<T, E>
        + TenantWork<&'c AsyncPgConnection, Result<T, E>, Fut: Send>
        + Send,
    E: From<DbError> + Send,
    T: Send,
{
    AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_state()
        .and_then(|s| s.change_transaction_depth(TransactionDepthChange::IncreaseDepth))
        .map_err(|e| E::from(DbError::from(e)))?;
    let begin = format!("BEGIN; SELECT set_merchant_context('{}')", merchant.0);
    let shared: &AsyncPgConnection = conn;
    let mut starter = shared;
    let (began, outcome) = futures::join!(starter.batch_execute(&begin), work(shared));
    began.map_err(|e| E::from(DbError::from(e)))?;
    outcome
}

/// Proof that a transaction's COMMIT went out behind its last statements and Postgres took it.
/// Only [`commit`] makes one.
#[must_use]
pub struct Committed(());

/// COMMIT, for [`Db::as_merchant_committed`]. List it *last* in the `futures::try_join!` of the
/// transaction's final statements: the connection sends statements in the order they are first
/// polled, so it reaches Postgres after them. If one of them failed, Postgres ends the aborted
/// transaction with a rollback instead, and the join returns that statement's error.
pub async fn commit(mut conn: &AsyncPgConnection) -> QueryResult<Committed> {
    diesel::sql_query("COMMIT")
        .prepared()
        .execute(&mut conn)
        .await?;
    Ok(Committed(()))
}

diesel::define_sql_function! {
    fn merchant_for_instagram_account(account: sql_types::Text) -> sql_types::Nullable<sql_types::Uuid>;
}
