//! Schema invariants, read from the catalogs of a migrated database.

use diesel::QueryableByName;
use diesel::sql_types::{Array, Bool, Text};
use diesel_async::RunQueryDsl;
use igsales_schema::TENANT_TABLES;
use igsales_tests::TestDb;

#[derive(QueryableByName, Debug)]
struct TableRls {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Bool)]
    enabled: bool,
    #[diesel(sql_type = Bool)]
    forced: bool,
    #[diesel(sql_type = Bool)]
    has_tenant_policy: bool,
}

#[tokio::test(flavor = "multi_thread")]
async fn every_tenant_table_has_rls_enabled_forced_and_a_using_and_with_check_policy() {
    let db = TestDb::migrated().await;
    let mut conn = db.superuser_conn().await;
    let rows: Vec<TableRls> = diesel::sql_query(
        "SELECT c.relname::text AS name, c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced,
                EXISTS (SELECT 1 FROM pg_policies p
                        WHERE p.schemaname = 'public' AND p.tablename = c.relname
                          AND p.cmd = 'ALL' AND 'public' = ANY (p.roles)
                          AND p.qual LIKE '%NULLIF(current_setting(''app.merchant_id''::text, true)%'
                          AND p.with_check LIKE '%NULLIF(current_setting(''app.merchant_id''::text, true)%')
                  AS has_tenant_policy
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
           AND (c.relname = 'merchants'
                OR EXISTS (SELECT 1 FROM pg_attribute a
                           WHERE a.attrelid = c.oid AND a.attname = 'merchant_id' AND NOT a.attisdropped))
         ORDER BY 1",
    )
    .load(&mut conn)
    .await
    .expect("catalog query");

    let mut found: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let mut expected = TENANT_TABLES.to_vec();
    found.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        found, expected,
        "TENANT_TABLES must list every table with merchant_id"
    );
    for r in &rows {
        assert!(r.enabled && r.forced && r.has_tenant_policy, "{r:?}");
    }
}

#[derive(QueryableByName, Debug)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn no_view_runs_with_its_owners_rights() {
    let db = TestDb::migrated().await;
    let mut conn = db.superuser_conn().await;
    let views: Vec<Name> = diesel::sql_query(
        "SELECT c.relname::text AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm')
           AND NOT coalesce(c.reloptions @> ARRAY['security_invoker=true'], false)",
    )
    .load(&mut conn)
    .await
    .expect("catalog query");
    let names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
    assert!(
        names.is_empty(),
        "views without security_invoker: {names:?}"
    );
}

#[derive(QueryableByName, Debug)]
struct DefinerFn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Array<Text>)]
    config: Vec<String>,
    #[diesel(sql_type = Bool)]
    public_can_execute: bool,
    #[diesel(sql_type = Bool)]
    app_can_execute: bool,
    #[diesel(sql_type = Text)]
    owner: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn security_definer_functions_pin_search_path_and_are_not_executable_by_public() {
    let db = TestDb::migrated().await;
    let mut conn = db.superuser_conn().await;
    let fns: Vec<DefinerFn> = diesel::sql_query(
        "SELECT p.proname::text AS name, coalesce(p.proconfig, '{}') AS config,
                EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                        WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') AS public_can_execute,
                has_function_privilege('igsales_app', p.oid, 'EXECUTE') AS app_can_execute,
                pg_get_userbyid(p.proowner)::text AS owner
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public' AND p.prosecdef
         ORDER BY 1",
    )
    .load(&mut conn)
    .await
    .expect("catalog query");
    let names: Vec<&str> = fns.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "accounts_due_for_token_refresh",
            "accounts_for_meta_user",
            "merchant_for_instagram_account",
            "merchant_ids",
            "merchants_with_customer",
            "search_products"
        ]
    );
    for f in &fns {
        assert!(
            f.config
                .iter()
                .any(|c| c == "search_path=pg_catalog, pg_temp"),
            "{f:?} must pin search_path"
        );
        assert!(!f.public_can_execute, "{f:?} is executable by PUBLIC");
        assert!(f.app_can_execute, "{f:?} must be callable by igsales_app");
        // Catalog search reads products of every tenant (and filters the context's merchant
        // itself); the id lookups read ids only. Each belongs to its own narrow role.
        let narrow = if f.name == "search_products" {
            "igsales_catalog"
        } else {
            "igsales_resolver"
        };
        assert_eq!(f.owner, narrow, "{f:?}: owned by its narrow role");
    }
}

#[derive(QueryableByName, Debug)]
struct Role {
    #[diesel(sql_type = Bool)]
    can_login: bool,
    #[diesel(sql_type = Bool)]
    is_super: bool,
    #[diesel(sql_type = Bool)]
    bypass_rls: bool,
}

#[tokio::test(flavor = "multi_thread")]
async fn the_group_roles_cannot_log_in_or_bypass_rls() {
    let db = TestDb::migrated().await;
    let mut conn = db.superuser_conn().await;
    for role in ["igsales_app", "igsales_resolver", "igsales_catalog"] {
        let r: Role = diesel::sql_query(
            "SELECT rolcanlogin AS can_login, rolsuper AS is_super, rolbypassrls AS bypass_rls
             FROM pg_roles WHERE rolname = $1",
        )
        .bind::<Text, _>(role)
        .get_result(&mut conn)
        .await
        .expect("role exists");
        assert!(
            !r.can_login && !r.is_super && !r.bypass_rls,
            "{role}: {r:?}"
        );
    }
}
