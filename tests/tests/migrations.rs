//! The embedded migrations: up on an empty database, idempotent, and reversible.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use igsales_schema::{TENANT_TABLES, migrate};
use igsales_tests::TestDb;

/// Every migration directory under schema/migrations.
fn migration_count() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/migrations"))
        .expect("migrations directory")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
        .count()
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    yes: bool,
}

async fn tenant_tables_present(conn: &mut AsyncPgConnection) -> i64 {
    let tables: Vec<String> = TENANT_TABLES
        .iter()
        .map(|t| format!("public.{t}"))
        .collect();
    let row: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM unnest($1::text[]) t WHERE to_regclass(t) IS NOT NULL",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(tables)
    .get_result(conn)
    .await
    .expect("regclass query");
    row.n
}

async fn definer_functions(conn: &mut AsyncPgConnection) -> i64 {
    let row: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public' AND p.proname IN
           ('set_merchant_context', 'merchant_for_instagram_account', 'accounts_due_for_token_refresh', 'merchant_ids', 'accounts_for_meta_user', 'merchants_with_customer')",
    )
    .get_result(conn)
    .await
    .expect("pg_proc query");
    row.n
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_apply_to_an_empty_database_are_a_no_op_the_second_time_and_revert_cleanly() {
    let db = TestDb::empty().await;
    let mut inspect = db.superuser_conn().await;
    assert_eq!(tenant_tables_present(&mut inspect).await, 0);

    let applied = migrate::run_pending(db.owner_conn().await).expect("first run");
    assert_eq!(applied.len(), migration_count(), "{applied:?}");
    assert_eq!(
        tenant_tables_present(&mut inspect).await,
        TENANT_TABLES.len() as i64
    );
    assert_eq!(definer_functions(&mut inspect).await, 6);

    let again = migrate::run_pending(db.owner_conn().await).expect("second run");
    assert!(again.is_empty(), "second run applied {again:?}");

    let reverted = migrate::revert_all(db.owner_conn().await).expect("revert");
    assert_eq!(reverted.len(), migration_count());
    assert_eq!(tenant_tables_present(&mut inspect).await, 0);
    assert_eq!(definer_functions(&mut inspect).await, 0);
    for role in ["igsales_app", "igsales_resolver"] {
        let r: Flag =
            diesel::sql_query("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1) AS yes")
                .bind::<diesel::sql_types::Text, _>(role)
                .get_result(&mut inspect)
                .await
                .expect("role query");
        assert!(r.yes, "{role} must survive the down-migration");
    }
    let r: Flag = diesel::sql_query(
        "SELECT has_schema_privilege('igsales_app', 'public', 'USAGE') AND
                NOT pg_has_role(current_user, 'igsales_resolver', 'MEMBER') AS yes",
    )
    .get_result(&mut db.owner_conn().await)
    .await
    .expect("privilege query");
    // USAGE on public stays through PUBLIC's default grant; what matters is that the owner
    // did not keep the resolver's membership it borrowed.
    assert!(r.yes);

    // And up again after down: the migrations are truly reversible.
    let reapplied = migrate::run_pending(db.owner_conn().await).expect("re-apply");
    assert_eq!(reapplied.len(), migration_count());
    assert_eq!(
        tenant_tables_present(&mut inspect).await,
        TENANT_TABLES.len() as i64
    );
}
