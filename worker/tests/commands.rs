//! The operators' commands against a real database, run as the app's login role.

use std::io::Write as _;

use chrono::Utc;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use igsales_config::{KeyRing, parse_key_ring};
use igsales_schema::merchants::Language;
use igsales_schema::{DbError, MerchantId, Vault, accounts, merchants, products};
use igsales_tests::TestDb;
use igsales_tests::cli::{Outcome, key_entry, run};
use igsales_tests::shops::{self, Account};

const BIN: &str = env!("CARGO_BIN_EXE_worker");

fn worker(db_url: &str, args: &[&str]) -> Outcome {
    run(
        BIN,
        args,
        &[
            ("DATABASE_URL", db_url.to_owned()),
            ("ENCRYPTION_KEY", key_entry(1, 1)),
        ],
    )
}

fn create_merchant(db: &TestDb, name: &str) -> MerchantId {
    let out = worker(&db.app_url(), &["merchant", "create", "--name", name]);
    out.assert_code(0);
    out.stdout
        .trim()
        .parse()
        .expect("stdout is only the merchant id")
}

#[tokio::test(flavor = "multi_thread")]
async fn db_commands_refuse_roles_that_bypass_rls_but_migrate_may_use_the_owner() {
    let db = TestDb::migrated().await;
    let m = MerchantId::new_random().to_string();
    let commands: [&[&str]; 5] = [
        &["keys", "status"],
        &["keys", "rotate"],
        &["merchant", "create", "--name", "Shop"],
        &["merchant", "set", "--merchant", &m, "--ai", "off"],
        &["catalog", "import", "--merchant", &m, "missing.csv"],
    ];
    // The superuser bypasses RLS; the owner owns the tables. Both are refused, before any work.
    for (url, why) in [
        (db.superuser_url(), "is a superuser"),
        (db.owner_url(), "owns the tenant tables"),
    ] {
        for args in commands {
            if args[0] == "catalog" {
                continue; // validated before connecting; covered below with a real file
            }
            let out = worker(&url, args);
            out.assert_code(1);
            assert!(
                out.stderr.contains("row-level security"),
                "{args:?}: {}",
                out.stderr
            );
            assert!(out.stderr.contains(why), "{args:?}: {}", out.stderr);
        }
    }
    let dir = tempdir();
    let file = dir.join("ok.csv");
    std::fs::write(
        &file,
        "sku,name,description,price,currency,stock,url,image_url\nA,B,,1,,,,\n",
    )
    .expect("write csv");
    let out = worker(
        &db.superuser_url(),
        &[
            "catalog",
            "import",
            "--merchant",
            &m,
            file.to_str().expect("utf8"),
        ],
    );
    out.assert_code(1);
    assert!(out.stderr.contains("row-level security"), "{}", out.stderr);

    // migrate is the one command meant for the owner (or a superuser).
    let out = run(
        BIN,
        &["migrate"],
        &[("MIGRATION_DATABASE_URL", db.superuser_url())],
    );
    out.assert_code(0);
    assert!(out.stdout.contains("up to date"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_applies_everything_once_then_is_a_no_op() {
    let db = TestDb::empty().await;
    let out = run(
        BIN,
        &["migrate"],
        &[("MIGRATION_DATABASE_URL", db.owner_url())],
    );
    out.assert_code(0);
    let count = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/migrations"))
        .expect("migrations directory")
        .count();
    assert!(
        out.stdout.contains(&format!("applied {count} migration")),
        "{}",
        out.stdout
    );
    let out = run(BIN, &["migrate"], &[("DATABASE_URL", db.owner_url())]);
    out.assert_code(0);
    assert!(out.stdout.contains("nothing to apply"), "{}", out.stdout);
    // The app role can now work in it.
    create_merchant(&db, "After migrate");
}

#[derive(QueryableByName)]
struct LoginRow {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    member: bool,
    #[diesel(sql_type = diesel::sql_types::Text)]
    hash: String,
}

/// The owner URL reaches `migrate` alone: it also keeps the app's login role (DATABASE_URL's
/// user and password) in `igsales_app`, which compose's separate psql step used to do.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_keeps_the_login_role_of_database_url_in_the_app_group_with_its_password() {
    let db = TestDb::empty().await;
    let login = format!("igsales_test_login_{}", std::process::id());
    let app_url = |password: &str| {
        db.owner_url()
            .replacen("igsales_test_owner", &format!("{login}:{password}"), 1)
    };
    let role = async || -> Option<LoginRow> {
        diesel::sql_query(
            "SELECT pg_has_role(r.rolname, 'igsales_app', 'MEMBER') AS member, a.rolpassword AS hash
             FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = $1",
        )
        .bind::<diesel::sql_types::Text, _>(&login)
        .get_result(&mut db.superuser_conn().await)
        .await
        .ok()
    };
    let mut hashes = Vec::new();
    for (password, want) in [
        ("first-p%40ss", "created in igsales_app"),
        ("second-secret", "up to date"),
    ] {
        let out = run(
            BIN,
            &["migrate"],
            &[
                ("MIGRATION_DATABASE_URL", db.owner_url()),
                ("DATABASE_URL", app_url(password)),
            ],
        );
        out.assert_code(0);
        assert!(out.stdout.contains(want), "{}", out.stdout);
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(
            !all.contains("first-p") && !all.contains("second-secret"),
            "no password in the output"
        );
        let now = role().await.expect("the login role exists");
        assert!(now.member, "a member of igsales_app");
        assert!(now.hash.starts_with("SCRAM-SHA-256$"), "it has a password");
        hashes.push(now.hash);
    }
    assert_ne!(
        hashes[0], hashes[1],
        "the second run set the second password"
    );
    use diesel_async::SimpleAsyncConnection;
    db.superuser_conn()
        .await
        .batch_execute(&format!("DROP ROLE {login}"))
        .await
        .expect("drop the test's login role");
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn superuser_count(db: &TestDb, sql: &str) -> i64 {
    let row: Count = diesel::sql_query(sql)
        .get_result(&mut db.superuser_conn().await)
        .await
        .expect("count");
    row.n
}

#[tokio::test(flavor = "multi_thread")]
async fn merchant_create_and_set_work_under_rls() {
    let db = TestDb::migrated().await;
    let id = create_merchant(&db, "  Loja da Ana ");
    let out = worker(
        &db.app_url(),
        &[
            "merchant",
            "set",
            "--merchant",
            &id.to_string(),
            "--ai",
            "off",
            "--persona",
            "Warm and brief.",
        ],
    );
    out.assert_code(0);
    let app = db.app_db(1).await;
    let m = app
        .as_merchant(id, async |c: &AsyncPgConnection| {
            Ok::<_, DbError>(merchants::find(c, id).await?)
        })
        .await
        .expect("find")
        .expect("merchant exists");
    assert_eq!(m.name, "Loja da Ana");
    assert!(!m.ai_enabled);
    assert_eq!(m.persona, "Warm and brief.");
    assert!(
        m.handoff_message.contains("team"),
        "default hand-off message: {}",
        m.handoff_message
    );

    // Instagram counts bytes: 600 "é" are 600 characters but 1200 bytes, refused before any
    // write; 500 fit.
    let too_long = "é".repeat(600);
    let out = worker(
        &db.app_url(),
        &[
            "merchant",
            "set",
            "--merchant",
            &id.to_string(),
            "--handoff-message",
            &too_long,
        ],
    );
    out.assert_code(2);
    assert!(
        out.stderr.contains("--handoff-message") && out.stderr.contains("1000 bytes"),
        "{}",
        out.stderr
    );
    let fits = "é".repeat(500);
    worker(
        &db.app_url(),
        &[
            "merchant",
            "set",
            "--merchant",
            &id.to_string(),
            "--handoff-message",
            &fits,
        ],
    )
    .assert_code(0);
    let m = app
        .as_merchant(id, async |c: &AsyncPgConnection| {
            Ok::<_, DbError>(merchants::find(c, id).await?)
        })
        .await
        .expect("find")
        .expect("merchant exists");
    assert_eq!(m.handoff_message, fits);
    assert_eq!(m.language, Language::PtBr, "the default language");

    let set_language = |l: &str| {
        worker(
            &db.app_url(),
            &[
                "merchant",
                "set",
                "--merchant",
                &id.to_string(),
                "--language",
                l,
            ],
        )
    };
    set_language("es").assert_code(0);
    let out = set_language("fr");
    out.assert_code(2);
    assert!(
        out.stderr.contains("--language") && out.stderr.contains("pt-BR, es, en"),
        "{}",
        out.stderr
    );
    let language = app
        .as_merchant(id, async |c: &AsyncPgConnection| {
            Ok::<_, DbError>(merchants::language(c, id).await?)
        })
        .await
        .expect("language");
    assert_eq!(language, Some(Language::Es));

    let unknown = MerchantId::new_random().to_string();
    let out = worker(
        &db.app_url(),
        &["merchant", "set", "--merchant", &unknown, "--ai", "on"],
    );
    out.assert_code(1);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
}

fn import(db: &TestDb, merchant: MerchantId, file: &std::path::Path) -> Outcome {
    let file = file.to_str().expect("utf8 path");
    worker(
        &db.app_url(),
        &[
            "catalog",
            "import",
            "--merchant",
            &merchant.to_string(),
            file,
        ],
    )
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "igsales-test-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

async fn products_of(db: &TestDb, m: MerchantId) -> Vec<products::Product> {
    db.app_db(1)
        .await
        .as_merchant(m, async |c: &AsyncPgConnection| {
            Ok::<_, DbError>(products::list(c).await?)
        })
        .await
        .expect("list products")
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_import_upserts_by_sku_for_one_merchant_only_and_a_bad_row_imports_nothing() {
    let db = TestDb::migrated().await;
    let a = create_merchant(&db, "A");
    let b = create_merchant(&db, "B");
    let dir = tempdir();

    let csv = dir.join("catalog.csv");
    std::fs::write(
        &csv,
        "sku,name,description,price,currency,stock,url,image_url\n\
         TEE-1,Black tee,Organic cotton,49.90,BRL,12,https://shop.example/tee,https://shop.example/tee.jpg\n\
         MUG-2,Mug,,15,,,,\n",
    )
    .expect("write");
    let out = import(&db, a, &csv);
    out.assert_code(0);
    assert!(out.stdout.contains("2 new, 0 updated"), "{}", out.stdout);

    let seen_by_a = products_of(&db, a).await;
    assert_eq!(
        seen_by_a.iter().map(|p| p.sku.as_str()).collect::<Vec<_>>(),
        ["MUG-2", "TEE-1"]
    );
    assert_eq!(seen_by_a[1].price.to_string(), "49.9000");
    assert_eq!(seen_by_a[1].stock, Some(12));
    assert!(
        products_of(&db, b).await.is_empty(),
        "B must not see A's catalog"
    );

    // JSON, upserting one SKU and adding another.
    let json = dir.join("catalog.json");
    std::fs::write(
        &json,
        r#"[{"sku":"TEE-1","name":"Black tee","description":"","price":"44.90","currency":"BRL","stock":3,"url":null,"image_url":null},
            {"sku":"CAP-3","name":"Cap","description":"","price":20,"currency":"BRL","stock":null,"url":null,"image_url":null}]"#,
    )
    .expect("write");
    let out = import(&db, a, &json);
    out.assert_code(0);
    assert!(out.stdout.contains("1 new, 1 updated"), "{}", out.stdout);
    let tee = products_of(&db, a)
        .await
        .into_iter()
        .find(|p| p.sku == "TEE-1")
        .expect("tee");
    assert_eq!(tee.price.to_string(), "44.9000");
    assert_eq!(tee.stock, Some(3));

    // One bad row among good ones: nothing changes, the row is named, exit 1.
    let bad = dir.join("bad.csv");
    let mut f = std::fs::File::create(&bad).expect("create");
    writeln!(f, "sku,name,description,price,currency,stock,url,image_url").expect("write");
    writeln!(f, "NEW-9,Fresh,,10.00,BRL,1,,").expect("write");
    writeln!(f, "TEE-1,Black tee,,9.99,BRL,,,").expect("write");
    writeln!(f, "HAT-4,Hat,,ten,BRL,,,").expect("write");
    drop(f);
    let before = superuser_count(&db, "SELECT count(*) AS n FROM products").await;
    let out = import(&db, a, &bad);
    out.assert_code(1);
    assert!(out.stderr.contains("CSV line 4: price"), "{}", out.stderr);
    assert!(
        out.stderr.contains("nothing was imported"),
        "{}",
        out.stderr
    );
    assert_eq!(
        superuser_count(&db, "SELECT count(*) AS n FROM products").await,
        before
    );
    let tee = products_of(&db, a)
        .await
        .into_iter()
        .find(|p| p.sku == "TEE-1")
        .expect("tee");
    assert_eq!(
        tee.price.to_string(),
        "44.9000",
        "the good rows of a bad file must not land"
    );

    // An unknown merchant imports nothing either.
    let out = worker(
        &db.app_url(),
        &[
            "catalog",
            "import",
            "--merchant",
            &MerchantId::new_random().to_string(),
            csv.to_str().expect("utf8"),
        ],
    );
    out.assert_code(1);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
}

fn ring(spec: &str) -> KeyRing {
    parse_key_ring(spec).expect("valid ring")
}

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = Text)]
    token_ciphertext: String,
}

async fn stored_tokens(db: &TestDb) -> Vec<String> {
    let rows: Vec<Stored> = diesel::sql_query(
        "SELECT token_ciphertext FROM instagram_accounts WHERE token_ciphertext IS NOT NULL ORDER BY instagram_page_id",
    )
    .load(&mut db.superuser_conn().await)
    .await
    .expect("tokens");
    rows.into_iter().map(|r| r.token_ciphertext).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_moves_every_token_to_the_first_key_once() {
    let db = TestDb::migrated().await;
    let old = key_entry(1, 1);
    let new = key_entry(2, 2);
    let old_vault = Vault::new(&ring(&old));
    let app = db.app_db(2).await;
    let mut accounts_made = Vec::new();
    for (i, name) in ["A", "B"].iter().enumerate() {
        let m = create_merchant(&db, name);
        let page = format!("1784140000000{i}");
        let token = format!("IGAA-token-{name}");
        let account = Account::new(&old_vault, &page, &token).expires_in_days(60);
        shops::connect(&app, m, &account)
            .await
            .expect("connect account");
        accounts_made.push((m, page, format!("IGAA-token-{name}")));
    }
    let both = format!("{new},{old}");
    let keys = |args: &[&str]| {
        run(
            BIN,
            args,
            &[
                ("DATABASE_URL", db.app_url()),
                ("ENCRYPTION_KEY", both.clone()),
            ],
        )
    };

    let status = keys(&["keys", "status"]);
    status.assert_code(0);
    assert!(
        status
            .stdout
            .contains("2 of 2 stored tokens are not under the current key v2"),
        "{}",
        status.stdout
    );

    let first = keys(&["keys", "rotate"]);
    first.assert_code(0);
    assert!(
        first.stdout.contains("rotated 2 token(s) to v2"),
        "{}",
        first.stdout
    );
    assert!(
        first.stderr.contains("[2/2]"),
        "progress on stderr: {}",
        first.stderr
    );
    let after_first = stored_tokens(&db).await;
    assert!(
        after_first.iter().all(|t| t.starts_with("v2:")),
        "{after_first:?}"
    );

    let status = keys(&["keys", "status"]);
    assert!(
        status
            .stdout
            .contains("all 2 stored tokens are under the current key v2"),
        "{}",
        status.stdout
    );

    let second = keys(&["keys", "rotate"]);
    second.assert_code(0);
    assert!(
        second.stdout.contains("rotated 0 token(s)"),
        "{}",
        second.stdout
    );
    assert_eq!(
        stored_tokens(&db).await,
        after_first,
        "a second rotate must change nothing"
    );

    // The new key alone now opens every token: the old key can be retired.
    let new_only = Vault::new(&ring(&new));
    for (m, page, plain) in accounts_made {
        let vault = &new_only;
        let token = app
            .as_merchant(m, async move |c: &AsyncPgConnection| {
                accounts::token(c, vault, m, &page).await
            })
            .await
            .expect("decrypts under v2");
        assert_eq!(token.expose(), plain);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_reports_tokens_it_cannot_decrypt_and_exits_1() {
    let db = TestDb::migrated().await;
    let m = create_merchant(&db, "A");
    let lost = Vault::new(&ring(&key_entry(7, 7)));
    let app = db.app_db(1).await;
    let account = Account {
        expires_at: Utc::now(),
        ..Account::new(&lost, "17841400000001", "t")
    };
    shops::connect(&app, m, &account).await.expect("connect");
    let out = run(
        BIN,
        &["keys", "rotate"],
        &[
            ("DATABASE_URL", db.app_url()),
            ("ENCRYPTION_KEY", key_entry(2, 2)),
        ],
    );
    out.assert_code(1);
    assert!(out.stderr.contains("key version 7"), "{}", out.stderr);
    assert!(
        out.stdout.contains("NOT IN ENCRYPTION_KEY"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_refresh_enqueues_the_due_accounts_or_one_merchants() {
    use redis::AsyncCommands;
    let db = TestDb::migrated().await;
    let redis = igsales_tests::TestRedis::lease().await;
    let vault = Vault::new(&ring(&key_entry(1, 1)));
    let app = db.app_db(2).await;
    let mut made = Vec::new();
    for (i, expires_in_days) in [3, 60].into_iter().enumerate() {
        let m = create_merchant(&db, &format!("Shop {i}"));
        let page = format!("1784150000000{i}");
        let account = Account::new(&vault, &page, "IGAA-token").expires_in_days(expires_in_days);
        shops::connect(&app, m, &account)
            .await
            .expect("connect account");
        made.push((m, page));
    }
    // Both connected two days ago (Meta refreshes only tokens a day old or more).
    diesel::sql_query(
        "UPDATE instagram_accounts SET connected_at = now() - interval '2 days', token_refreshed_at = NULL",
    )
    .execute(&mut db.superuser_conn().await)
    .await
    .expect("age the accounts");
    let tokens = |args: &[&str]| {
        run(
            BIN,
            args,
            &[("DATABASE_URL", db.app_url()), ("REDIS_URL", redis.url())],
        )
    };
    let mut conn = redis.connection().await;
    let queued = async |conn: &mut redis::aio::MultiplexedConnection| -> Vec<String> {
        let jobs: Vec<String> = conn.hvals("refresh_token:data").await.expect("jobs");
        let _: () = conn.del("refresh_token:data").await.expect("clear");
        jobs
    };

    // Only the token expiring within the (default 10-day) window is due.
    let out = tokens(&["tokens", "refresh", "--due"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("enqueued 1 refresh_token job"),
        "{}",
        out.stdout
    );
    let jobs = queued(&mut conn).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(jobs[0].contains(&made[0].1), "{}", jobs[0]);

    // A named merchant's accounts go whether due or not.
    let out = tokens(&["tokens", "refresh", "--merchant", &made[1].0.to_string()]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("enqueued 1 refresh_token job"),
        "{}",
        out.stdout
    );
    let jobs = queued(&mut conn).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(jobs[0].contains(&made[1].1), "{}", jobs[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn comment_rules_and_product_links_are_stored_per_merchant_and_bad_input_stores_nothing() {
    let db = TestDb::migrated().await;
    let (a, b) = (create_merchant(&db, "A"), create_merchant(&db, "B"));
    let dir = tempdir();
    let file = dir.join("catalog.csv");
    std::fs::write(
        &file,
        "sku,name,description,price,currency,stock,url,image_url\n\
         MUG,Caneca,,35.00,BRL,3,,\nCAP,Boné,,59.90,BRL,0,,\n",
    )
    .expect("write");
    import(&db, a, &file).assert_code(0);
    let (a_s, b_s) = (a.to_string(), b.to_string());
    let url = db.app_url();

    // Neither --on nor --off, or both: a usage error.
    worker(&url, &["merchant", "comments", "--merchant", &a_s]).assert_code(2);
    worker(
        &url,
        &["merchant", "comments", "--merchant", &a_s, "--on", "--off"],
    )
    .assert_code(2);
    let out = worker(
        &url,
        &[
            "merchant",
            "comments",
            "--merchant",
            &a_s,
            "--on",
            "--media",
            "111",
            "222",
            "--trigger",
            "preço",
            "--public-reply",
            "Te chamei no direct!",
        ],
    );
    out.assert_code(0);
    assert!(
        out.stdout
            .contains("comments: on; media: 111, 222; triggers: preço"),
        "{}",
        out.stdout
    );
    // --off keeps the lists.
    let out = worker(&url, &["merchant", "comments", "--merchant", &a_s, "--off"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("comments: off; media: 111, 222"),
        "{}",
        out.stdout
    );
    let out = worker(
        &url,
        &[
            "merchant",
            "comments",
            "--merchant",
            &MerchantId::new_random().to_string(),
            "--on",
        ],
    );
    out.assert_code(1);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);

    // Links: an unknown SKU (here: A's SKU for B) links nothing; none unlinks.
    worker(
        &url,
        &[
            "catalog",
            "link",
            "--merchant",
            &a_s,
            "--media",
            "111",
            "--sku",
            "CAP",
            "MUG",
        ],
    )
    .assert_code(0);
    let out = worker(
        &url,
        &[
            "catalog",
            "link",
            "--merchant",
            &b_s,
            "--media",
            "111",
            "--sku",
            "MUG",
        ],
    );
    out.assert_code(1);
    assert!(out.stderr.contains("not in merchant"), "{}", out.stderr);
    worker(
        &url,
        &[
            "catalog",
            "link",
            "--merchant",
            &a_s,
            "--ref",
            "promo",
            "--sku",
            "MUG",
        ],
    )
    .assert_code(0);
    worker(
        &url,
        &["catalog", "link", "--merchant", &a_s, "--sku", "MUG"],
    )
    .assert_code(2);
    assert_eq!(
        superuser_count(
            &db,
            &format!("SELECT count(*) AS n FROM product_links WHERE merchant_id = '{a}' AND kind = 'media' AND key = '111'")
        )
        .await,
        2
    );
    assert_eq!(
        superuser_count(
            &db,
            &format!("SELECT count(*) AS n FROM product_links WHERE merchant_id = '{b}'")
        )
        .await,
        0
    );
    worker(
        &url,
        &["catalog", "link", "--merchant", &a_s, "--media", "111"],
    )
    .assert_code(0);
    assert_eq!(
        superuser_count(
            &db,
            "SELECT count(*) AS n FROM product_links WHERE kind = 'media'"
        )
        .await,
        0
    );
    assert_eq!(
        superuser_count(
            &db,
            &format!("SELECT count(*) AS n FROM comment_rules WHERE merchant_id = '{a}' AND NOT enabled AND public_reply IS NOT NULL")
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ice_breakers_are_set_on_every_connected_account_then_cleared_and_bad_input_calls_nothing()
{
    use igsales_tests::fake_meta::{Endpoint, FakeAccount, FakeMeta, FakeMetaConfig};
    let db = TestDb::migrated().await;
    let fake = FakeMeta::start(FakeMetaConfig::default()).await;
    let vault = Vault::new(&ring(&key_entry(1, 1)));
    let app = db.app_db(2).await;
    let m = create_merchant(&db, "Loja Azul");
    let pages = ["17841400000000011", "17841400000000012"];
    let mut tokens = Vec::new();
    for (i, page) in pages.into_iter().enumerate() {
        let token = fake.issue_long_lived_token(&FakeAccount {
            user_id: page.into(),
            app_scoped_id: format!("2{i}"),
            username: format!("loja{i}"),
        });
        shops::connect(&app, m, &Account::new(&vault, page, &token))
            .await
            .expect("connect account");
        tokens.push(token);
    }
    let m_s = m.to_string();
    let ice = |args: &[&str]| {
        let mut all = vec!["merchant", "ice-breakers"];
        all.extend_from_slice(args);
        run(
            BIN,
            &all,
            &[
                ("DATABASE_URL", db.app_url()),
                ("ENCRYPTION_KEY", key_entry(1, 1)),
                ("GRAPH_API_VERSION", "v26.0".to_owned()),
                ("GRAPH_API_BASE_URL", fake.base_url()),
            ],
        )
    };
    let questions = [
        ("Qual o prazo de entrega?", "SHIPPING"),
        ("Vocês fazem trocas?", "RETURNS"),
        ("Quais as formas de pagamento?", "PAYMENT"),
        ("Tem loja física?", "STORE|SP"),
    ];
    let set_args: Vec<String> = questions.iter().map(|(q, p)| format!("{q}|{p}")).collect();
    let with_set = |values: &[String]| -> Vec<String> {
        let mut args = vec!["--merchant".to_owned(), m_s.clone()];
        for v in values {
            args.extend(["--set".to_owned(), v.clone()]);
        }
        args
    };
    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    // Usage errors and Meta's limits are refused before anything is called.
    ice(&["--merchant", &m_s]).assert_code(2);
    let both = [with_set(&set_args[..1]), vec!["--clear".to_owned()]].concat();
    ice(&strs(&both)).assert_code(2);
    for bad in ["Sem barra", "|PAYLOAD", "Pergunta sem payload|", " | "] {
        let out = ice(&strs(&with_set(&[bad.to_owned()])));
        out.assert_code(2);
        assert!(
            out.stderr.contains("Question|payload"),
            "{bad}: {}",
            out.stderr
        );
    }
    let mut five = set_args.clone();
    five.push("E a quinta?|FIFTH".to_owned());
    let out = ice(&strs(&with_set(&five)));
    out.assert_code(2);
    out.assert_invalid("--set", "5 ice breakers; Meta allows 1 to 4");
    let long = format!("{}|LONG", "a".repeat(81));
    let out = ice(&strs(&with_set(&[set_args[0].clone(), long])));
    out.assert_code(2);
    out.assert_invalid("--set", "ice breaker 2: the question is empty or over 80");
    assert!(
        fake.requests().is_empty(),
        "refused input reached Meta: {:?}",
        fake.requests()
    );

    // Set: both accounts hold the four questions, in order.
    let out = ice(&strs(&with_set(&set_args)));
    out.assert_code(0);
    for page in pages {
        assert!(
            out.stdout
                .contains(&format!("account {page}: 4 ice breaker(s) set")),
            "{}",
            out.stdout
        );
        let held = fake.ice_breakers(page);
        let want: Vec<(String, String)> = questions
            .iter()
            .map(|(q, p)| ((*q).to_owned(), (*p).to_owned()))
            .collect();
        assert_eq!(held, want, "{page}");
    }
    let calls = fake.requests_to(Endpoint::MessengerProfile);
    assert_eq!(calls.len(), 2, "one call per account");
    let mut paths: Vec<&str> = calls.iter().map(|r| r.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        pages.map(|p| format!("/v26.0/{p}/messenger_profile")),
        "each account's own node"
    );
    assert_eq!(
        fake.requests().len(),
        2,
        "nothing but the two profile calls"
    );

    // Clear: neither account holds any.
    let out = ice(&["--merchant", &m_s, "--clear"]);
    out.assert_code(0);
    for page in pages {
        assert!(
            out.stdout
                .contains(&format!("account {page}: ice breakers cleared")),
            "{}",
            out.stdout
        );
        assert!(fake.ice_breakers(page).is_empty(), "{page}");
    }
    let deletes = fake
        .requests_to(Endpoint::MessengerProfile)
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .count();
    assert_eq!(deletes, 2);

    // An account whose token Meta rejects is named and fails the command; the other is set.
    fake.expire_token(&tokens[1]);
    let out = ice(&strs(&with_set(&set_args[..1])));
    out.assert_code(1);
    assert!(
        out.stderr
            .contains(&format!("account {}: failed", pages[1])),
        "{}",
        out.stderr
    );
    assert_eq!(fake.ice_breakers(pages[0]).len(), 1);
    assert!(fake.ice_breakers(pages[1]).is_empty());

    // A merchant without a connected account, or none at all: nothing to set, exit 1.
    let lonely = create_merchant(&db, "Sem conta").to_string();
    let out = ice(&["--merchant", &lonely, "--clear"]);
    out.assert_code(1);
    assert!(
        out.stderr.contains("no connected Instagram account"),
        "{}",
        out.stderr
    );
    let out = ice(&[
        "--merchant",
        &MerchantId::new_random().to_string(),
        "--clear",
    ]);
    out.assert_code(1);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
}
