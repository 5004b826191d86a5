//! Row-level security, exercised as the app's login role (never the superuser, which would
//! bypass RLS and make every assertion here pass vacuously).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use igsales_schema::{Db, DbError, MerchantId, TENANT_TABLES};
use igsales_tests::TestDb;
use uuid::Uuid;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Session {
    #[diesel(sql_type = Nullable<Text>)]
    setting: Option<String>,
    #[diesel(sql_type = Integer)]
    pid: i32,
}

/// One merchant's rows in every tenant table, with ids derived from the merchant so other
/// tenants' tests can aim at them.
struct Tenant {
    id: MerchantId,
    conversation: Uuid,
    page: String,
}

impl Tenant {
    fn new(n: u32) -> Tenant {
        Tenant {
            id: MerchantId::new_random(),
            conversation: Uuid::new_v4(),
            page: format!("1784140000000000{n}"),
        }
    }

    /// An INSERT of a fresh row owned by this tenant into `table`.
    fn insert_sql(&self, table: &str, tag: &str) -> String {
        let (m, c, p) = (self.id, self.conversation, &self.page);
        match table {
            "merchants" => format!("INSERT INTO merchants (id, name) VALUES ('{m}', 'Shop {tag}')"),
            "instagram_accounts" => format!(
                "INSERT INTO instagram_accounts (merchant_id, instagram_page_id, username)
                 VALUES ('{m}', '{p}{}', 'user_{tag}')",
                tag.len()
            ),
            "webhook_events" => format!(
                "INSERT INTO webhook_events (merchant_id, event_id, kind, instagram_page_id)
                 VALUES ('{m}', 'message:{tag}', 'message', '{p}')"
            ),
            "conversations" => format!(
                "INSERT INTO conversations (merchant_id, instagram_page_id, customer_igsid)
                 VALUES ('{m}', '{p}', 'cust_{tag}')"
            ),
            "messages" => format!(
                "INSERT INTO messages (merchant_id, conversation_id, mid, direction, author, text, sent_at)
                 VALUES ('{m}', '{c}', 'mid_{tag}', 'inbound', 'customer', 'hello', now())"
            ),
            "outbound_messages" => format!(
                "INSERT INTO outbound_messages (merchant_id, conversation_id, idempotency_key,
                   instagram_page_id, recipient_igsid, part_index, text)
                 VALUES ('{m}', '{c}', 'key_{tag}', '{p}', 'cust', 0, 'hi')"
            ),
            "products" => format!(
                "INSERT INTO products (merchant_id, sku, name, price)
                 VALUES ('{m}', 'sku_{tag}', 'Thing', 9.90)"
            ),
            "product_words" => format!(
                "INSERT INTO product_words (merchant_id, word) VALUES ('{m}', 'word_{tag}')"
            ),
            "comment_rules" => format!(
                "INSERT INTO comment_rules (merchant_id, public_reply) VALUES ('{m}', 'reply {tag}')"
            ),
            "product_links" => format!(
                "INSERT INTO product_links (merchant_id, kind, key, sku)
                 VALUES ('{m}', 'media', 'media_{tag}', 'sku_seed')"
            ),
            other => panic!("no fixture for tenant table {other}: add one"),
        }
    }

    /// Exactly one row per tenant table.
    fn seed_sql(&self) -> String {
        let (m, c, p) = (self.id, self.conversation, &self.page);
        format!(
            "INSERT INTO merchants (id, name) VALUES ('{m}', 'Shop');
             INSERT INTO instagram_accounts (merchant_id, instagram_page_id, username) VALUES ('{m}', '{p}', 'shop');
             INSERT INTO webhook_events (merchant_id, event_id, kind, instagram_page_id) VALUES ('{m}', 'message:seed', 'message', '{p}');
             INSERT INTO conversations (id, merchant_id, instagram_page_id, customer_igsid) VALUES ('{c}', '{m}', '{p}', 'cust');
             INSERT INTO messages (merchant_id, conversation_id, mid, direction, author, text, sent_at)
               VALUES ('{m}', '{c}', 'mid_seed', 'inbound', 'customer', 'hello', now());
             INSERT INTO outbound_messages (merchant_id, conversation_id, idempotency_key, instagram_page_id, recipient_igsid, part_index, text)
               VALUES ('{m}', '{c}', 'key_seed', '{p}', 'cust', 0, 'hi');
             INSERT INTO products (merchant_id, sku, name, price) VALUES ('{m}', 'sku_seed', 'Thing', 9.90);
             INSERT INTO comment_rules (merchant_id, public_reply) VALUES ('{m}', 'see your DMs');
             INSERT INTO product_links (merchant_id, kind, key, sku) VALUES ('{m}', 'media', 'media_seed', 'sku_seed');"
            // The product's one word ("thing") is product_words' row: its trigger wrote it.
        )
    }
}

fn key_column(table: &str) -> &'static str {
    if table == "merchants" {
        "id"
    } else {
        "merchant_id"
    }
}

/// A text column every tenant table has, to mark a row as changed.
fn marker_column(table: &str) -> &'static str {
    match table {
        "merchants" | "products" => "name",
        "instagram_accounts" => "username",
        "webhook_events" => "kind",
        "conversations" => "customer_igsid",
        "product_words" => "word",
        "comment_rules" => "public_reply",
        "product_links" => "key",
        "messages" | "outbound_messages" => "text",
        other => panic!("no marker column for {other}"),
    }
}

async fn count_as(db: &Db, m: MerchantId, sql: &str) -> i64 {
    let sql = sql.to_owned();
    db.as_merchant(m, async move |mut c: &AsyncPgConnection| {
        let row: Count = diesel::sql_query(sql).get_result(&mut c).await?;
        Ok::<_, DbError>(row.n)
    })
    .await
    .expect("count query")
}

async fn execute_as(db: &Db, m: MerchantId, sql: &str) -> Result<usize, DbError> {
    let sql = sql.to_owned();
    db.as_merchant(m, async move |mut c: &AsyncPgConnection| {
        Ok(diesel::sql_query(sql).execute(&mut c).await?)
    })
    .await
}

fn assert_rls_violation(result: Result<usize, DbError>, what: &str) {
    match result {
        Err(e) => assert!(
            e.to_string().contains("row-level security"),
            "{what}: expected an RLS violation, got: {e}"
        ),
        Ok(n) => panic!("{what}: expected an RLS violation, but {n} row(s) were written"),
    }
}

async fn seeded() -> (TestDb, Db, Tenant, Tenant) {
    let test_db = TestDb::migrated().await;
    let db = test_db.app_db(4).await;
    let (a, b) = (Tenant::new(1), Tenant::new(2));
    for t in [&a, &b] {
        let sql = t.seed_sql();
        db.as_merchant(t.id, async move |mut c: &AsyncPgConnection| {
            c.batch_execute(&sql).await?;
            Ok::<_, DbError>(())
        })
        .await
        .expect("seed");
    }
    (test_db, db, a, b)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_merchant_cannot_see_create_change_move_or_delete_another_merchants_rows() {
    let (test_db, db, a, b) = seeded().await;

    for table in TENANT_TABLES {
        let key = key_column(table);
        let marker = marker_column(table);

        // SELECT: A sees exactly its own row, none of B's.
        assert_eq!(
            count_as(&db, a.id, &format!("SELECT count(*) AS n FROM {table}")).await,
            1,
            "{table}: A's view"
        );
        assert_eq!(
            count_as(
                &db,
                a.id,
                &format!("SELECT count(*) AS n FROM {table} WHERE {key} = '{}'", b.id)
            )
            .await,
            0,
            "{table}: A sees B's row"
        );

        // INSERT: a row for B under A's context is refused by WITH CHECK.
        assert_rls_violation(
            execute_as(&db, a.id, &b.insert_sql(table, "by_a")).await,
            &format!("{table}: A inserts for B"),
        );

        // UPDATE: B's rows are invisible to A, so nothing changes.
        let n = execute_as(
            &db,
            a.id,
            &format!(
                "UPDATE {table} SET {marker} = 'hijacked' WHERE {key} = '{}'",
                b.id
            ),
        )
        .await
        .expect("update runs");
        assert_eq!(n, 0, "{table}: A updated B's row");

        // Move: A cannot hand its own row to B.
        assert_rls_violation(
            execute_as(
                &db,
                a.id,
                &format!(
                    "UPDATE {table} SET {key} = '{}' WHERE {key} = '{}'",
                    b.id, a.id
                ),
            )
            .await,
            &format!("{table}: A moves its row to B"),
        );

        // DELETE: nothing of B's goes.
        let n = execute_as(
            &db,
            a.id,
            &format!("DELETE FROM {table} WHERE {key} = '{}'", b.id),
        )
        .await
        .expect("delete runs");
        assert_eq!(n, 0, "{table}: A deleted B's row");

        // B still has its one row, unmarked.
        assert_eq!(
            count_as(&db, b.id, &format!("SELECT count(*) AS n FROM {table}")).await,
            1,
            "{table}: B's row survived"
        );
        assert_eq!(
            count_as(
                &db,
                b.id,
                &format!("SELECT count(*) AS n FROM {table} WHERE {marker} = 'hijacked'")
            )
            .await,
            0,
            "{table}: B's row was changed"
        );
    }

    // The rows really exist (seen past RLS by the superuser): the zeros above are RLS's doing.
    let mut su = test_db.superuser_conn().await;
    for table in TENANT_TABLES {
        let row: Count = diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
            .get_result(&mut su)
            .await
            .expect("superuser count");
        assert_eq!(row.n, 2, "{table} holds both tenants' rows");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_merchant_context_nothing_is_visible_and_nothing_can_be_written() {
    let (test_db, _db, a, _b) = seeded().await;
    let mut conn = test_db.app_conn().await;
    for table in TENANT_TABLES {
        let key = key_column(table);
        let marker = marker_column(table);
        let row: Count = diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
            .get_result(&mut conn)
            .await
            .expect("select");
        assert_eq!(row.n, 0, "{table}: visible without context");
        let insert = diesel::sql_query(a.insert_sql(table, "noctx"))
            .execute(&mut conn)
            .await;
        assert_rls_violation(
            insert.map_err(DbError::from),
            &format!("{table}: insert without context"),
        );
        let n = diesel::sql_query(format!("UPDATE {table} SET {marker} = 'x'"))
            .execute(&mut conn)
            .await
            .expect("update");
        assert_eq!(n, 0, "{table}: updated without context");
        let n = diesel::sql_query(format!("DELETE FROM {table} WHERE {key} IS NOT NULL"))
            .execute(&mut conn)
            .await
            .expect("delete");
        assert_eq!(n, 0, "{table}: deleted without context");
    }
    // Setting a NULL context is an error, not "no filter".
    let err = diesel::sql_query("SELECT set_merchant_context(NULL)")
        .execute(&mut conn)
        .await
        .expect_err("NULL context must raise");
    assert!(err.to_string().contains("must not be NULL"), "{err}");
}

async fn session(mut conn: &AsyncPgConnection) -> Session {
    diesel::sql_query(
        "SELECT current_setting('app.merchant_id', true) AS setting, pg_backend_pid() AS pid",
    )
    .get_result(&mut conn)
    .await
    .expect("session query")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_context_does_not_outlive_its_transaction_on_a_pooled_connection() {
    let test_db = TestDb::migrated().await;
    let db = test_db.app_db(1).await;
    let a = MerchantId::new_random();
    let inside = db
        .as_merchant(a, async |c: &AsyncPgConnection| {
            Ok::<_, DbError>(session(c).await)
        })
        .await
        .expect("as_merchant");
    assert_eq!(inside.setting.as_deref(), Some(a.to_string().as_str()));

    // The pool has one connection: the next checkout is the same backend, with no merchant.
    let mut raw = db.raw_connection_for_tests().await.expect("checkout");
    raw.batch_execute("BEGIN").await.expect("begin");
    let after = session(&raw).await;
    raw.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(after.pid, inside.pid, "same pooled connection");
    assert!(
        after.setting.as_deref().unwrap_or("").is_empty(),
        "context leaked into the next transaction: {:?}",
        after.setting
    );
}

/// The merchant context and the open transaction as the next checkout of a one-connection
/// pool sees them.
async fn next_checkout(db: &Db) -> (Session, bool) {
    let mut raw = db.raw_connection_for_tests().await.expect("checkout");
    // SAVEPOINT is refused outside a transaction block.
    let open = raw.batch_execute("SAVEPOINT probe").await.is_ok();
    (session(&raw).await, open)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipelined_commit_commits_only_when_every_statement_succeeded_and_leaves_no_context() {
    let test_db = TestDb::migrated().await;
    let db = test_db.app_db(1).await;
    let a = MerchantId::new_random();
    let inside = db
        .as_merchant_committed(a, async |c: &AsyncPgConnection| {
            let (s, (), done) = futures::try_join!(
                async { Ok::<_, diesel::result::Error>(session(c).await) },
                igsales_schema::merchants::create(c, a, "Piped", None),
                igsales_schema::commit(c),
            )?;
            Ok::<_, DbError>((s, done))
        })
        .await
        .expect("committed transaction");
    assert_eq!(inside.setting.as_deref(), Some(a.to_string().as_str()));
    assert_eq!(
        count_as(&db, a, "SELECT count(*) AS n FROM merchants").await,
        1
    );
    let (after, open) = next_checkout(&db).await;
    assert_eq!(after.pid, inside.pid, "same pooled connection");
    assert!(
        after.setting.as_deref().unwrap_or("").is_empty(),
        "{:?}",
        after.setting
    );
    assert!(!open, "no transaction left open");

    // A statement fails in the same flight as the COMMIT: nothing of the batch is kept, the
    // statement's error is the one returned, and the connection comes back clean.
    let b = MerchantId::new_random();
    let err = db
        .as_merchant_committed(b, async |c: &AsyncPgConnection| {
            let ((), (), done) = futures::try_join!(
                igsales_schema::merchants::create(c, b, "Kept?", None),
                igsales_schema::merchants::create(c, b, "Duplicate id", None),
                igsales_schema::commit(c),
            )?;
            Ok::<_, DbError>(((), done))
        })
        .await
        .expect_err("the duplicate insert fails");
    assert!(err.to_string().contains("duplicate key"), "{err}");
    assert_eq!(
        count_as(&db, b, "SELECT count(*) AS n FROM merchants").await,
        0
    );
    let (after, open) = next_checkout(&db).await;
    assert!(
        after.setting.as_deref().unwrap_or("").is_empty(),
        "{:?}",
        after.setting
    );
    assert!(!open, "no transaction left open");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_transaction_does_not_leak_its_context_or_its_writes() {
    let test_db = TestDb::migrated().await;
    let db = test_db.app_db(1).await;
    let a = Tenant::new(1);
    let seed = a.seed_sql();
    db.as_merchant(a.id, async move |mut c: &AsyncPgConnection| {
        c.batch_execute(&seed).await?;
        Ok::<_, DbError>(())
    })
    .await
    .expect("seed");

    let cancelled_pid = Arc::new(Mutex::new(None));
    let pid_slot = cancelled_pid.clone();
    let insert = a.insert_sql("products", "cancelled");
    let outcome = tokio::time::timeout(
        Duration::from_millis(500),
        db.as_merchant(a.id, async move |mut c: &AsyncPgConnection| {
            let s = session(c).await;
            *pid_slot.lock().expect("lock") = Some(s.pid);
            diesel::sql_query(insert).execute(&mut c).await?;
            diesel::sql_query("SELECT pg_sleep(30)")
                .execute(&mut c)
                .await?;
            Ok::<_, DbError>(())
        }),
    )
    .await;
    assert!(
        outcome.is_err(),
        "the transaction should have been cancelled by the timeout"
    );
    let cancelled_pid = cancelled_pid
        .lock()
        .expect("lock")
        .expect("the transaction started");

    // The single pooled connection was discarded, not handed out mid-transaction.
    let mut raw = db
        .raw_connection_for_tests()
        .await
        .expect("checkout after cancel");
    let now = session(&raw).await;
    assert_ne!(
        now.pid, cancelled_pid,
        "a connection with an open transaction was reused"
    );
    assert!(
        now.setting.as_deref().unwrap_or("").is_empty(),
        "context leaked: {:?}",
        now.setting
    );
    let visible: Count = diesel::sql_query("SELECT count(*) AS n FROM products")
        .get_result(&mut raw)
        .await
        .expect("count");
    assert_eq!(visible.n, 0, "rows visible without a context");
    drop(raw);

    // And the cancelled insert never committed.
    assert_eq!(
        count_as(
            &db,
            a.id,
            "SELECT count(*) AS n FROM products WHERE sku = 'sku_cancelled'"
        )
        .await,
        0
    );
    assert_eq!(
        count_as(&db, a.id, "SELECT count(*) AS n FROM products").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_connections_carry_the_statement_and_idle_in_transaction_timeouts() {
    let test_db = TestDb::migrated().await;
    let mut settings = test_db.app_settings(1);
    settings.pool.statement_timeout = Duration::from_millis(200);
    settings.pool.idle_in_transaction_timeout = Duration::from_millis(300);
    let db = Db::connect(&settings).await.expect("connect");
    let m = MerchantId::new_random();

    #[derive(QueryableByName)]
    struct Timeouts {
        #[diesel(sql_type = Text)]
        statement: String,
        #[diesel(sql_type = Text)]
        idle: String,
    }
    let t: Timeouts = db
        .as_merchant(m, async |mut c: &AsyncPgConnection| {
            Ok::<_, DbError>(
                diesel::sql_query(
                    "SELECT current_setting('statement_timeout') AS statement,
                            current_setting('idle_in_transaction_session_timeout') AS idle",
                )
                .get_result(&mut c)
                .await?,
            )
        })
        .await
        .expect("read settings");
    assert_eq!((t.statement.as_str(), t.idle.as_str()), ("200ms", "300ms"));

    let err = db
        .as_merchant(m, async |mut c: &AsyncPgConnection| {
            diesel::sql_query("SELECT pg_sleep(2)")
                .execute(&mut c)
                .await?;
            Ok::<_, DbError>(())
        })
        .await
        .expect_err("a slow statement is cancelled by Postgres");
    assert!(err.to_string().contains("statement timeout"), "{err}");
}
