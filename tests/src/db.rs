//! Isolated Postgres databases for tests.
//!
//! Once per migration set, a template database is built (owned by the non-superuser
//! `igsales_test_owner`, migrated by it); every test then gets its own clone, which is dropped
//! when the [`TestDb`] goes out of scope. Tests reach it as three roles: the superuser (only to
//! set up and inspect), the owner (migrations), and `igsales_test_app`, the app's login role in
//! `igsales_app`, under which RLS applies.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use igsales_config::{DbSettings, PgUrl, db_pool};
use igsales_schema::Db;

pub const OWNER_ROLE: &str = "igsales_test_owner";
pub const APP_ROLE: &str = "igsales_test_app";
pub const BYPASS_ROLE: &str = "igsales_test_bypass";
const ROLES_SQL: &str = include_str!("../sql/roles.sql");
/// Serialises role and template creation across test processes.
const SETUP_LOCK: i64 = 0x0069_6773_616c_6573;

/// `postgres://postgres@127.0.0.1:5432` unless `IGSALES_TEST_PG` says otherwise (no database).
pub fn server() -> String {
    std::env::var("IGSALES_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

fn url_as(role: &str, db: &str) -> String {
    let server = server();
    let host = server
        .split_once('@')
        .map(|(_, h)| h)
        .unwrap_or(server.trim_start_matches("postgres://"));
    format!("postgres://{role}@{host}/{db}")
}

fn superuser_url(db: &str) -> String {
    format!("{}/{db}", server())
}

async fn connect(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url)
        .await
        .unwrap_or_else(|e| panic!("connect to test Postgres ({url}): {e}"))
}

/// Hash of the migration files: a changed migration gets a new template.
fn migrations_hash() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/migrations");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read schema/migrations") {
        let path = entry.expect("dir entry").path();
        for f in ["up.sql", "down.sql"] {
            let p = path.join(f);
            if let Ok(text) = std::fs::read_to_string(&p) {
                files.push((p.display().to_string(), text));
            }
        }
    }
    files.sort();
    let mut h = DefaultHasher::new();
    files.hash(&mut h);
    format!("{:016x}", h.finish())
}

async fn exec(conn: &mut AsyncPgConnection, sql: &str) {
    conn.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn database_exists(conn: &mut AsyncPgConnection, name: &str) -> bool {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let row: N = diesel::sql_query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result(conn)
        .await
        .expect("query pg_database");
    row.n > 0
}

async fn stale_templates(conn: &mut AsyncPgConnection, current: &str) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let rows: Vec<Name> = diesel::sql_query(
        "SELECT datname::text AS datname FROM pg_database
         WHERE datname LIKE 'igsales\\_tpl\\_%' AND datname <> $1",
    )
    .bind::<diesel::sql_types::Text, _>(current)
    .load(conn)
    .await
    .unwrap_or_default();
    rows.into_iter().map(|r| r.datname).collect()
}

/// Creates the roles (idempotent) and the migrated template; returns the template's name.
async fn ensure_template() -> String {
    let template = format!("igsales_tpl_{}", migrations_hash());
    let mut admin = connect(&superuser_url("postgres")).await;
    exec(
        &mut admin,
        &format!("SELECT pg_advisory_lock({SETUP_LOCK})"),
    )
    .await;
    exec(&mut admin, ROLES_SQL).await;
    if !database_exists(&mut admin, &template).await {
        let building = format!("{template}_build");
        exec(
            &mut admin,
            &format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
        )
        .await;
        exec(
            &mut admin,
            &format!("CREATE DATABASE {building} OWNER {OWNER_ROLE}"),
        )
        .await;
        let owner = connect(&url_as(OWNER_ROLE, &building)).await;
        tokio::task::block_in_place(|| igsales_schema::migrate::run_pending(owner))
            .expect("migrate template");
        // Publish atomically: a half-built template is never cloned.
        exec(
            &mut admin,
            &format!("ALTER DATABASE {building} RENAME TO {template}"),
        )
        .await;
        // Templates of older migration sets are dead weight; one still being cloned by a
        // concurrent run just stays until next time.
        for stale in stale_templates(&mut admin, &template).await {
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {stale}"))
                .await;
        }
    }
    exec(
        &mut admin,
        &format!("SELECT pg_advisory_unlock({SETUP_LOCK})"),
    )
    .await;
    template
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{n}_{nanos:x}", std::process::id())
}

/// One test's own database. Dropped (forcefully) when this value is.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// A migrated database. Needs a multi-threaded runtime (`flavor = "multi_thread"`).
    pub async fn migrated() -> TestDb {
        let template = ensure_template().await;
        let name = unique_name("igsales_t");
        let mut admin = connect(&superuser_url("postgres")).await;
        exec(
            &mut admin,
            &format!("CREATE DATABASE {name} TEMPLATE {template} OWNER {OWNER_ROLE}"),
        )
        .await;
        TestDb { name }
    }

    /// An empty database owned by the owner role, for migration tests.
    pub async fn empty() -> TestDb {
        ensure_template().await;
        let name = unique_name("igsales_e");
        let mut admin = connect(&superuser_url("postgres")).await;
        exec(
            &mut admin,
            &format!("CREATE DATABASE {name} OWNER {OWNER_ROLE}"),
        )
        .await;
        TestDb { name }
    }

    /// The app's login role (member of `igsales_app`, not superuser, owns nothing).
    pub fn app_url(&self) -> String {
        url_as(APP_ROLE, &self.name)
    }
    /// A member of `igsales_app` with `BYPASSRLS`: what the binaries must refuse.
    pub fn bypass_url(&self) -> String {
        url_as(BYPASS_ROLE, &self.name)
    }
    /// The owner role, which runs migrations.
    pub fn owner_url(&self) -> String {
        url_as(OWNER_ROLE, &self.name)
    }
    /// The `postgres` superuser: set-up and inspection only, never for RLS assertions.
    pub fn superuser_url(&self) -> String {
        superuser_url(&self.name)
    }

    pub fn app_settings(&self, pool_size: u32) -> DbSettings {
        db_settings(
            PgUrl::parse(&self.app_url()).expect("valid test URL"),
            pool_size,
            Duration::from_secs(5),
        )
    }

    /// The app's [`Db`] as the app role, through the same start-up checks as the binaries.
    pub async fn app_db(&self, pool_size: u32) -> Db {
        Db::connect(&self.app_settings(pool_size))
            .await
            .expect("connect as the app role")
    }

    pub async fn app_conn(&self) -> AsyncPgConnection {
        connect(&self.app_url()).await
    }
    pub async fn owner_conn(&self) -> AsyncPgConnection {
        connect(&self.owner_url()).await
    }
    pub async fn superuser_conn(&self) -> AsyncPgConnection {
        connect(&self.superuser_url()).await
    }

    /// The text column `s` of every row `sql` returns, read as the superuser (past RLS).
    pub async fn strings(&self, sql: &str) -> Vec<String> {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            s: String,
        }
        let rows: Vec<Row> = diesel::sql_query(sql)
            .load(&mut self.superuser_conn().await)
            .await
            .expect("query");
        rows.into_iter().map(|r| r.s).collect()
    }

    /// `strings(sql)` once it returns a row, polled every 100 ms for up to 10 s (empty if
    /// never): for rows a worker writes a moment after the webhook was answered.
    pub async fn strings_eventually(&self, sql: &str) -> Vec<String> {
        for _ in 0..100 {
            let rows = self.strings(sql).await;
            if !rows.is_empty() {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Vec::new()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime: use a separate thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut admin) =
                    AsyncPgConnection::establish(&superuser_url("postgres")).await
                {
                    let _ = admin.batch_execute(&sql).await;
                }
            });
        })
        .join();
    }
}

/// Pool settings for `url` as tests and benchmarks use them (statements may take 30 s).
pub fn db_settings(url: PgUrl, pool_size: u32, connect_timeout: Duration) -> DbSettings {
    DbSettings {
        url,
        pool: db_pool::Settings {
            size: pool_size,
            statement_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(30),
            connect_timeout,
        },
    }
}
