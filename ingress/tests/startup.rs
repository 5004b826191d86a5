//! `ingress` start-up: configuration is validated before anything connects (exit 2, every
//! problem named, no secret printed); unreachable dependencies and RLS-bypassing roles exit 1;
//! a good configuration serves health and readiness and stops cleanly on SIGTERM.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use igsales_tests::TestDb;
use igsales_tests::cli::{key_entry, run};
use igsales_tests::http::{self, Answer};
use igsales_tests::tls_redis::{TlsRedis, tls_redis};

const BIN: &str = env!("CARGO_BIN_EXE_ingress");
const DB_PASSWORD: &str = "planted-db-password-91c2";
const REDIS_PASSWORD: &str = "planted-redis-password-4b7e";
const IG_SECRET: &str = "planted-ig-app-secret-0d9f";
const META_SECRET: &str = "planted-meta-app-secret-6a1c";
const VERIFY_TOKEN: &str = "planted-verify-token-2e8b";
const ADMIN_TOKEN: &str = "planted-admin-token-5f3d-0123456789abcdef";

const REQUIRED: &[&str] = &[
    "META_APP_ID",
    "IG_APP_SECRET",
    "GRAPH_API_VERSION",
    "API_BASE_URL",
    "ENCRYPTION_KEY",
    "DATABASE_URL",
    "REDIS_URL",
    "PORT",
    "META_WEBHOOK_VERIFY_TOKEN",
    "ADMIN_API_TOKEN",
    "OAUTH_SUCCESS_REDIRECT_URL",
    "OAUTH_FAILURE_REDIRECT_URL",
];

/// A complete configuration with planted secrets; Postgres and Redis point at closed ports.
fn full_env() -> Vec<(&'static str, String)> {
    vec![
        ("META_APP_ID", "1234567890".to_owned()),
        ("IG_APP_SECRET", IG_SECRET.to_owned()),
        ("META_APP_SECRET", META_SECRET.to_owned()),
        ("GRAPH_API_VERSION", "v26.0".to_owned()),
        ("API_BASE_URL", "http://127.0.0.1:10000/".to_owned()),
        ("ENCRYPTION_KEY", key_entry(1, 0x3c)),
        (
            "DATABASE_URL",
            format!("postgres://app:{DB_PASSWORD}@127.0.0.1:1/igsales"),
        ),
        (
            "REDIS_URL",
            format!("redis://:{REDIS_PASSWORD}@127.0.0.1:1/0"),
        ),
        ("PORT", "10000".to_owned()),
        ("META_WEBHOOK_VERIFY_TOKEN", VERIFY_TOKEN.to_owned()),
        ("ADMIN_API_TOKEN", ADMIN_TOKEN.to_owned()),
        (
            "OAUTH_SUCCESS_REDIRECT_URL",
            "http://dashboard.local/ok".to_owned(),
        ),
        (
            "OAUTH_FAILURE_REDIRECT_URL",
            "http://dashboard.local/failed".to_owned(),
        ),
        ("DATABASE_CONNECT_TIMEOUT_MS", "500".to_owned()),
        ("REDIS_CONNECT_TIMEOUT_MS", "500".to_owned()),
    ]
}

fn with(
    env: &[(&'static str, String)],
    var: &'static str,
    value: &str,
) -> Vec<(&'static str, String)> {
    let mut env: Vec<_> = env.iter().filter(|(k, _)| *k != var).cloned().collect();
    env.push((var, value.to_owned()));
    env
}

fn without(env: &[(&'static str, String)], var: &str) -> Vec<(&'static str, String)> {
    env.iter().filter(|(k, _)| *k != var).cloned().collect()
}

fn secrets() -> Vec<String> {
    let key = key_entry(1, 0x3c)
        .split_once(':')
        .map(|(_, k)| k.to_owned())
        .unwrap_or_default();
    [
        DB_PASSWORD,
        REDIS_PASSWORD,
        IG_SECRET,
        META_SECRET,
        VERIFY_TOKEN,
        ADMIN_TOKEN,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([key])
    .collect()
}

#[test]
fn each_missing_variable_is_named_and_exits_2_and_all_are_named_at_once() {
    for var in REQUIRED {
        let out = run(BIN, &[], &without(&full_env(), var));
        out.assert_code(2);
        assert!(
            out.stderr.contains(&format!("{var} is missing")),
            "without {var}: {}",
            out.stderr
        );
    }
    let out = run(BIN, &[], &[]);
    out.assert_code(2);
    for var in REQUIRED {
        assert!(
            out.stderr.contains(&format!("{var} is missing")),
            "{var}: {}",
            out.stderr
        );
    }
    assert!(
        out.stderr
            .contains(&format!("({} problems)", REQUIRED.len())),
        "{}",
        out.stderr
    );
}

#[test]
fn invalid_values_are_named_with_the_expected_form() {
    use base64::Engine as _;
    let short_key = format!(
        "1:{}",
        base64::engine::general_purpose::STANDARD.encode([9u8; 19])
    );
    let mut env = with(&full_env(), "ENCRYPTION_KEY", &short_key);
    env = with(&env, "GRAPH_API_VERSION", "26");
    env = with(&env, "PORT", "abc");
    env = with(&env, "ADMIN_API_TOKEN", "too-short");
    env = with(
        &env,
        "CORS_ALLOWED_ORIGINS",
        "https://ok.example,https://bad.example/path",
    );
    env = with(&env, "OAUTH_SUCCESS_REDIRECT_URL", "/relative");
    env = with(&env, "WEBHOOK_MAX_BODY_BYTES", "-1");
    env = with(&env, "ACCOUNT_CACHE_HIT_SECS", "61");
    env = with(&env, "ACCOUNT_CACHE_MISS_SECS", "6");
    let out = run(BIN, &[], &env);
    out.assert_code(2);
    for (var, form) in [
        ("ENCRYPTION_KEY", "19 bytes, not 32"),
        ("GRAPH_API_VERSION", "vNN.N"),
        ("PORT", "1–65535"),
        ("ADMIN_API_TOKEN", "at least 32 characters"),
        ("CORS_ALLOWED_ORIGINS", "origins"),
        ("OAUTH_SUCCESS_REDIRECT_URL", "http(s)://"),
        ("WEBHOOK_MAX_BODY_BYTES", "bytes"),
        ("ACCOUNT_CACHE_HIT_SECS", "1–60"),
        ("ACCOUNT_CACHE_MISS_SECS", "1–5"),
    ] {
        out.assert_invalid(var, form);
    }
    assert!(
        !out.stderr.contains("too-short"),
        "a value was echoed: {}",
        out.stderr
    );
}

#[test]
fn production_requires_tls_redis_with_a_password_and_https_urls() {
    let env = with(&full_env(), "APP_ENV", "production");
    let out = run(BIN, &[], &env);
    out.assert_code(2);
    for var in [
        "REDIS_URL",
        "API_BASE_URL",
        "OAUTH_SUCCESS_REDIRECT_URL",
        "OAUTH_FAILURE_REDIRECT_URL",
    ] {
        assert!(
            out.stderr.contains(&format!("{var} is invalid")),
            "{var}: {}",
            out.stderr
        );
    }
    let mut env = with(&env, "REDIS_URL", "rediss://:pw@127.0.0.1:1");
    for var in [
        "API_BASE_URL",
        "OAUTH_SUCCESS_REDIRECT_URL",
        "OAUTH_FAILURE_REDIRECT_URL",
    ] {
        env = with(&env, var, "https://igsales.example/x");
    }
    // Now valid: it gets as far as connecting (and fails on the closed port).
    run(BIN, &[], &env).assert_code(1);
}

#[test]
fn unreachable_redis_or_postgres_exits_1_naming_it_and_how_to_fix_it() {
    let out = run(BIN, &[], &full_env());
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("Redis is unreachable at 127.0.0.1:1 (REDIS_URL)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("Start Redis"), "{}", out.stderr);

    let env = with(&full_env(), "REDIS_URL", "redis://127.0.0.1:6379");
    let out = run(BIN, &[], &env);
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("Postgres is unreachable at 127.0.0.1:1/igsales (DATABASE_URL)"),
        "{}",
        out.stderr
    );
}

#[test]
fn no_output_ever_contains_a_planted_secret() {
    let mut outs = vec![
        run(BIN, &[], &full_env()),
        run(BIN, &["--help"], &full_env()),
        run(BIN, &[], &with(&full_env(), "PORT", "0")),
        run(
            BIN,
            &[],
            &with(&full_env(), "REDIS_URL", "redis://127.0.0.1:6379"),
        ),
        run(BIN, &[], &with(&full_env(), "APP_ENV", "production")),
    ];
    outs.push(run(
        BIN,
        &[],
        &with(
            &full_env(),
            "DATABASE_URL",
            &format!("postgres://app:{DB_PASSWORD}@/nohost"),
        ),
    ));
    for out in &outs {
        let text = out.output();
        for s in secrets() {
            assert!(!text.contains(&s), "secret leaked: {text}");
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn live_env(db_url: String, port: u16) -> Vec<(&'static str, String)> {
    let mut env = with(&full_env(), "REDIS_URL", "redis://127.0.0.1:6379");
    env = with(&env, "DATABASE_URL", &db_url);
    with(&env, "PORT", &port.to_string())
}

fn spawn(env: &[(&'static str, String)]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn ingress")
}

/// What the ingress on `port` answers to a GET of `path`; None while it does not answer.
fn get(port: u16, path: &str) -> Option<Answer> {
    let url = format!("http://127.0.0.1:{port}{path}");
    http::try_answer(http::agent(Duration::from_secs(2)).get(&url).call()).ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_as_the_app_role_serves_readiness_and_stops_on_sigterm() {
    let db = TestDb::migrated().await;
    let port = free_port();
    let mut child = spawn(&live_env(db.app_url(), port));
    let deadline = Instant::now() + Duration::from_secs(15);
    let ready = loop {
        if let Some(r) = get(port, "/readyz") {
            break r;
        }
        assert!(Instant::now() < deadline, "ingress did not come up");
        assert!(
            child.try_wait().expect("poll").is_none(),
            "ingress exited early"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ready.status, 200, "{}", ready.body);
    let body: serde_json::Value = serde_json::from_str(&ready.body).expect("json");
    assert_eq!(body, serde_json::json!({"redis": "ok", "postgres": "ok"}));
    assert_eq!(get(port, "/healthz").map(|r| r.status), Some(200));
    // The container health probe (no shell or curl in the image).
    run(BIN, &["healthcheck"], &[("PORT", port.to_string())]).assert_code(0);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code();
        }
        assert!(Instant::now() < deadline, "ingress ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
    run(BIN, &["healthcheck"], &[("PORT", port.to_string())]).assert_code(1);
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_to_start_as_a_superuser_a_bypassrls_role_or_the_table_owner() {
    let db = TestDb::migrated().await;
    for (url, why) in [
        (db.superuser_url(), "is a superuser"),
        (db.owner_url(), "owns the tenant tables"),
    ] {
        let out = run(BIN, &[], &live_env(url, free_port()));
        out.assert_code(1);
        assert!(out.stderr.contains("row-level security"), "{}", out.stderr);
        assert!(out.stderr.contains(why), "{}", out.stderr);
    }
}

#[test]
fn production_refuses_a_database_url_without_tls_unless_it_stays_on_the_machine() {
    let env = with(&full_env(), "APP_ENV", "production");
    let remote = format!("postgres://app:{DB_PASSWORD}@db.example.com:5432/igsales");
    for url in [remote.clone(), format!("{remote}?sslmode=prefer")] {
        let out = run(BIN, &[], &with(&env, "DATABASE_URL", &url));
        out.assert_code(2);
        out.assert_invalid(
            "DATABASE_URL",
            "sslmode=require, verify-ca or verify-full when APP_ENV=production",
        );
        assert!(!out.output().contains(DB_PASSWORD), "{}", out.stderr);
    }
    // The full env's 127.0.0.1 is loopback: plain is fine, so DATABASE_URL is not named.
    let out = run(BIN, &[], &env);
    out.assert_code(2);
    assert!(!out.stderr.contains("DATABASE_URL"), "{}", out.stderr);
}

fn production_env(redis: &TlsRedis) -> Vec<(&'static str, String)> {
    let mut env = with(&full_env(), "APP_ENV", "production");
    env = with(&env, "REDIS_URL", &redis.url());
    for var in [
        "API_BASE_URL",
        "OAUTH_SUCCESS_REDIRECT_URL",
        "OAUTH_FAILURE_REDIRECT_URL",
    ] {
        env = with(&env, var, "https://igsales.example/x");
    }
    env
}

#[test]
fn production_connects_to_redis_over_tls_and_verifies_its_certificate() {
    let redis = tls_redis("noeviction", REDIS_PASSWORD);
    // Trusting the test CA: Redis answers over TLS, so start-up moves on to Postgres.
    let env = with(&production_env(&redis), redis.trust().0, &redis.trust().1);
    let out = run(BIN, &[], &env);
    out.assert_code(1);
    assert!(
        out.stderr.contains("Postgres is unreachable"),
        "{}",
        out.stderr
    );
    // Not trusting it: the certificate check fails and Redis counts as unreachable.
    let out = run(BIN, &[], &production_env(&redis));
    out.assert_code(1);
    assert!(
        out.stderr.contains("Redis is unreachable"),
        "{}",
        out.stderr
    );
    for s in secrets() {
        assert!(!out.output().contains(&s));
    }
}

#[test]
fn production_refuses_a_redis_that_may_evict_keys() {
    let redis = tls_redis("allkeys-lru", REDIS_PASSWORD);
    let env = with(&production_env(&redis), redis.trust().0, &redis.trust().1);
    let out = run(BIN, &[], &env);
    out.assert_code(1);
    assert!(
        out.stderr.contains("maxmemory-policy allkeys-lru"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("noeviction"), "{}", out.stderr);
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_in_flight_request_finish_and_stops_accepting() {
    use igsales_tests::fake_meta::{Endpoint, Failure};
    let db = TestDb::migrated().await;
    let redis = igsales_tests::TestRedis::lease().await;
    let fake = common::fake_meta().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut env = live_env(db.app_url(), port);
    env = with(&env, "REDIS_URL", &redis.url());
    env = with(&env, "API_BASE_URL", &base);
    env = with(&env, "META_APP_ID", common::APP_ID);
    env = with(&env, "IG_APP_SECRET", common::IG_SECRET);
    env = with(&env, "GRAPH_API_BASE_URL", &fake.base_url());
    env = with(&env, "IG_OAUTH_BASE_URL", &fake.base_url());
    env = with(
        &env,
        "IG_AUTHORIZE_URL",
        &format!("{}/oauth/authorize", fake.base_url()),
    );
    let mut child = spawn(&env);
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(port, "/healthz").is_none() {
        assert!(Instant::now() < deadline, "ingress did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A merchant, and a connect flow whose code exchange Meta answers slowly.
    let merchant = igsales_schema::MerchantId::new_random();
    let shop = igsales_tests::shops::Shop::named("Shop");
    igsales_tests::shops::seed(&db.app_db(1).await, merchant, &shop)
        .await
        .expect("merchant");
    let auth = vec![("Authorization".to_owned(), format!("Bearer {ADMIN_TOKEN}"))];
    let started = http::post(
        format!("{base}/v1/merchants/{merchant}/instagram/connect"),
        String::new(),
        auth,
    )
    .await;
    assert_eq!(started.status, 201, "{}", started.body);
    let start_url = started.json()["start_url"]
        .as_str()
        .expect("start_url")
        .to_owned();
    let start = http::get(start_url, vec![]).await;
    let cookie = start
        .header("set-cookie")
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    let back = http::get(
        start.header("location").expect("location").to_owned(),
        vec![],
    )
    .await;
    let callback = back
        .header("location")
        .expect("location")
        .split('#')
        .next()
        .expect("url")
        .to_owned();
    fake.fail_next(
        Endpoint::CodeExchange,
        Failure::hang(Duration::from_millis(1500)),
    );
    let in_flight = tokio::spawn(http::get(callback, vec![("Cookie".to_owned(), cookie)]));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        fake.requests_to(Endpoint::CodeExchange).len(),
        1,
        "the callback is in flight"
    );

    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        get(port, "/healthz").is_none(),
        "new requests are refused after SIGTERM"
    );
    let finished = in_flight.await.expect("join");
    assert_eq!(finished.status, 302);
    assert!(
        finished
            .header("location")
            .is_some_and(|l| l.starts_with("http://dashboard.local/ok")),
        "{finished:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code();
        }
        assert!(Instant::now() < deadline, "ingress did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
}

#[test]
fn sentinel_settings_come_in_pairs_and_unreachable_sentinels_exit_1_naming_them() {
    // The sentinels without the master's name, a password for no sentinels, a WAIT longer
    // than the delivery's deadline: each named, exit 2.
    let env = with(&full_env(), "REDIS_SENTINELS", "127.0.0.1:1,127.0.0.1:2");
    let out = run(BIN, &[], &env);
    out.assert_code(2);
    assert!(
        out.stderr.contains("REDIS_SENTINEL_MASTER is invalid"),
        "{}",
        out.stderr
    );
    let env = with(&full_env(), "REDIS_SENTINEL_MASTER", "igsales");
    let env = with(
        &env,
        "REDIS_SENTINEL_PASSWORD",
        "planted-sentinel-password-77a1",
    );
    let env = with(&env, "REDIS_WAIT_TIMEOUT_MS", "4000");
    let out = run(BIN, &[], &env);
    out.assert_code(2);
    for var in [
        "REDIS_SENTINELS is invalid",
        "REDIS_SENTINEL_PASSWORD is invalid",
        "REDIS_WAIT_TIMEOUT_MS is invalid: expected milliseconds, less than WEBHOOK_DEADLINE_MS",
    ] {
        assert!(out.stderr.contains(var), "{var}: {}", out.stderr);
    }
    assert!(!out.stderr.contains("planted-sentinel-password"));
    let env = with(&full_env(), "REDIS_SENTINELS", "127.0.0.1");
    let out = run(BIN, &[], &env);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("REDIS_SENTINELS is invalid: expected comma-separated host:port"),
        "{}",
        out.stderr
    );

    // Complete, but no sentinel answers: exit 1, naming where it looked.
    let env = with(&full_env(), "REDIS_SENTINELS", "127.0.0.1:1,127.0.0.1:2");
    let env = with(&env, "REDIS_SENTINEL_MASTER", "igsales");
    let env = with(
        &env,
        "REDIS_SENTINEL_PASSWORD",
        "planted-sentinel-password-77a1",
    );
    let out = run(BIN, &[], &env);
    out.assert_code(1);
    assert!(
        out.stderr.contains(
            "Redis is unreachable at master igsales via sentinels 127.0.0.1:1,127.0.0.1:2 (REDIS_SENTINELS)"
        ),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("planted-sentinel-password"));
    assert!(!out.stderr.contains(REDIS_PASSWORD));
}
