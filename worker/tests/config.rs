//! `worker` configuration: every subcommand validates exactly what it uses, names every missing
//! or invalid variable in one run, exits 2, and never prints a secret.

use igsales_tests::cli::{key_entry, run};
use igsales_tests::tls_redis::tls_redis;

const BIN: &str = env!("CARGO_BIN_EXE_worker");
const PLANTED_PASSWORD: &str = "planted-db-password-7f3a";
const MERCHANT: &str = "3f0c5a4e-8d8e-4d39-9d4b-5c6a6b0c2f11";

/// A complete environment whose secrets are planted markers. Postgres is unreachable (port 1),
/// so a command that gets past validation fails with exit 1, not 0.
fn full_env() -> Vec<(&'static str, String)> {
    vec![
        (
            "DATABASE_URL",
            format!("postgres://app:{PLANTED_PASSWORD}@127.0.0.1:1/igsales"),
        ),
        (
            "MIGRATION_DATABASE_URL",
            format!("postgres://owner:{PLANTED_PASSWORD}@127.0.0.1:1/igsales"),
        ),
        ("ENCRYPTION_KEY", key_entry(1, 0x5a)),
        ("DATABASE_CONNECT_TIMEOUT_MS", "500".to_owned()),
        (
            "REDIS_URL",
            format!("redis://:{PLANTED_PASSWORD}@127.0.0.1:1/0"),
        ),
        ("REDIS_CONNECT_TIMEOUT_MS", "300".to_owned()),
        ("IG_APP_SECRET", PLANTED_SECRET.to_owned()),
        ("OPENAI_API_KEY", PLANTED_SECRET.to_owned()),
        ("GRAPH_API_VERSION", "v26.0".to_owned()),
    ]
}

const PLANTED_SECRET: &str = "planted-app-secret-c41d";

fn planted_key() -> String {
    key_entry(1, 0x5a)
        .split_once(':')
        .map(|(_, k)| k.to_owned())
        .unwrap_or_default()
}

struct Case {
    args: &'static [&'static str],
    required: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        args: &["keys", "status"],
        required: &["DATABASE_URL", "ENCRYPTION_KEY"],
    },
    Case {
        args: &["keys", "rotate"],
        required: &["DATABASE_URL", "ENCRYPTION_KEY"],
    },
    Case {
        args: &["merchant", "create", "--name", "Shop"],
        required: &["DATABASE_URL"],
    },
    Case {
        args: &["merchant", "set", "--merchant", MERCHANT, "--ai", "off"],
        required: &["DATABASE_URL"],
    },
    Case {
        args: &["catalog", "import", "--merchant", MERCHANT, "products.csv"],
        required: &["DATABASE_URL"],
    },
    Case {
        args: &["run"],
        required: &[
            "DATABASE_URL",
            "REDIS_URL",
            "ENCRYPTION_KEY",
            "GRAPH_API_VERSION",
            "OPENAI_API_KEY",
        ],
    },
    Case {
        args: &["dlq", "list", "--queue", "send_message"],
        required: &["REDIS_URL"],
    },
    Case {
        args: &["dlq", "drain", "--queue", "send_message", "--yes"],
        required: &["REDIS_URL"],
    },
];

fn without(env: &[(&'static str, String)], vars: &[&str]) -> Vec<(&'static str, String)> {
    env.iter()
        .filter(|(k, _)| !vars.contains(k))
        .cloned()
        .collect()
}

#[test]
fn each_subcommand_names_each_missing_variable_and_exits_2() {
    for case in CASES {
        for var in case.required {
            let out = run(BIN, case.args, &without(&full_env(), &[var]));
            out.assert_code(2);
            assert!(
                out.stderr.contains(&format!("{var} is missing")),
                "{:?} without {var}: {}",
                case.args,
                out.stderr
            );
        }
        // With everything removed, every required variable is named in the same run.
        let out = run(BIN, case.args, &[]);
        out.assert_code(2);
        for var in case.required {
            assert!(
                out.stderr.contains(&format!("{var} is missing")),
                "{:?}: {}",
                case.args,
                out.stderr
            );
        }
    }
}

#[test]
fn subcommands_do_not_ask_for_what_they_do_not_use() {
    // No ENCRYPTION_KEY needed to create a merchant: it gets past validation and fails to
    // connect (exit 1), naming Postgres.
    let out = run(
        BIN,
        &["merchant", "create", "--name", "Shop"],
        &without(&full_env(), &["ENCRYPTION_KEY", "MIGRATION_DATABASE_URL"]),
    );
    out.assert_code(1);
    assert!(
        out.stderr.contains("Postgres is unreachable"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("DATABASE_URL"), "{}", out.stderr);
}

#[test]
fn migrate_falls_back_to_database_url_and_names_both_when_neither_is_set() {
    let out = run(BIN, &["migrate"], &[]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("MIGRATION_DATABASE_URL is missing"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("DATABASE_URL"), "{}", out.stderr);

    let out = run(
        BIN,
        &["migrate"],
        &without(&full_env(), &["MIGRATION_DATABASE_URL"]),
    );
    out.assert_code(1);
    assert!(out.stderr.contains("(DATABASE_URL)"), "{}", out.stderr);

    let out = run(BIN, &["migrate"], &full_env());
    out.assert_code(1);
    assert!(
        out.stderr.contains("Postgres is unreachable"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("(MIGRATION_DATABASE_URL)"),
        "{}",
        out.stderr
    );
}

#[test]
fn invalid_values_are_named_with_the_expected_form() {
    let short_key = {
        use base64::Engine as _;
        format!(
            "1:{}",
            base64::engine::general_purpose::STANDARD.encode([1u8; 19])
        )
    };
    let mut env = full_env();
    env.retain(|(k, _)| *k != "ENCRYPTION_KEY");
    env.push(("ENCRYPTION_KEY", short_key));
    env.push(("DATABASE_POOL_SIZE", "abc".to_owned()));
    env.push(("DATABASE_STATEMENT_TIMEOUT_MS", "-5".to_owned()));
    env.push(("APP_ENV", "staging".to_owned()));
    env.push(("LOG_FORMAT", "xml".to_owned()));
    let out = run(BIN, &["keys", "rotate"], &env);
    out.assert_code(2);
    for (var, form) in [
        ("ENCRYPTION_KEY", "19 bytes, not 32"),
        ("DATABASE_POOL_SIZE", "an integer 1–1000"),
        ("DATABASE_STATEMENT_TIMEOUT_MS", "milliseconds"),
        ("APP_ENV", "development or production"),
        ("LOG_FORMAT", "text or json"),
    ] {
        out.assert_invalid(var, form);
    }

    let mut env = full_env();
    env.push(("DATABASE_URL", "mysql://x@y/z".to_owned()));
    env.retain(|(k, v)| *k != "DATABASE_URL" || v.starts_with("mysql"));
    let out = run(BIN, &["merchant", "create", "--name", "x"], &env);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("DATABASE_URL is invalid: expected postgres://"),
        "{}",
        out.stderr
    );
}

#[test]
fn no_output_ever_contains_a_planted_secret() {
    let key = planted_key();
    let mut runs = Vec::new();
    for case in CASES {
        // Past validation, failing to connect.
        runs.push(run(BIN, case.args, &full_env()));
        // Failing validation on another variable while the secrets are set.
        let mut env = full_env();
        env.push(("DATABASE_POOL_SIZE", "zero".to_owned()));
        runs.push(run(BIN, case.args, &env));
        // Help output, which shows env-backed options.
        let mut args = case.args.to_vec();
        args.push("--help");
        runs.push(run(BIN, &args, &full_env()));
    }
    runs.push(run(BIN, &["migrate"], &full_env()));
    // A malformed URL carrying the secret.
    runs.push(run(
        BIN,
        &["merchant", "create", "--name", "x"],
        &[(
            "DATABASE_URL",
            format!("postgres://app:{PLANTED_PASSWORD}@/"),
        )],
    ));
    for out in &runs {
        let text = out.output();
        assert!(!text.contains(PLANTED_PASSWORD), "password leaked: {text}");
        assert!(!text.contains(PLANTED_SECRET), "secret leaked: {text}");
        assert!(!text.contains(&key), "key leaked: {text}");
    }
}

#[test]
fn usage_errors_exit_2() {
    run(
        BIN,
        &["merchant", "set", "--merchant", MERCHANT],
        &full_env(),
    )
    .assert_code(2);
    run(
        BIN,
        &["merchant", "set", "--merchant", "not-a-uuid", "--ai", "on"],
        &full_env(),
    )
    .assert_code(2);
    let out = run(
        BIN,
        &["catalog", "import", "--merchant", MERCHANT, "products.xlsx"],
        &full_env(),
    );
    out.assert_code(2);
    assert!(out.stderr.contains("FILE is invalid"), "{}", out.stderr);
    run(BIN, &["no-such-command"], &full_env()).assert_code(2);
}

#[test]
fn worker_run_names_invalid_knobs_and_unreachable_redis() {
    let mut env = full_env();
    for (var, value) in [
        ("WORKER_CONCURRENCY", "0"),
        ("JOB_MAX_ATTEMPTS", "many"),
        ("TOKEN_REFRESH_CRON", "every hour"),
        ("GRAPH_API_VERSION", "26"),
        ("JOB_MAX_ATTEMPTS_SEND_MESSAGE", "-1"),
        ("METRICS_PORT", "abc"),
    ] {
        env.retain(|(k, _)| *k != var);
        env.push((var, value.to_owned()));
    }
    let out = run(BIN, &["run"], &env);
    out.assert_code(2);
    out.assert_invalid("WORKER_CONCURRENCY", "1–1024");
    out.assert_invalid("JOB_MAX_ATTEMPTS", "1–100");
    out.assert_invalid("TOKEN_REFRESH_CRON", "cron expression");
    out.assert_invalid("GRAPH_API_VERSION", "vNN.N");
    out.assert_invalid("JOB_MAX_ATTEMPTS_SEND_MESSAGE", "1–100");
    out.assert_invalid("METRICS_PORT", "1–65535");

    let out = run(BIN, &["run"], &full_env());
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("Redis is unreachable at 127.0.0.1:1 (REDIS_URL)"),
        "{}",
        out.stderr
    );
}

#[test]
fn worker_run_does_not_need_the_app_secret() {
    // Past validation without IG_APP_SECRET: it goes on to connect and finds no Redis.
    let out = run(BIN, &["run"], &without(&full_env(), &["IG_APP_SECRET"]));
    out.assert_code(1);
    assert!(!out.stderr.contains("IG_APP_SECRET"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Redis is unreachable at 127.0.0.1:1 (REDIS_URL)"),
        "{}",
        out.stderr
    );
}

#[test]
fn worker_run_in_production_refuses_a_redis_that_may_evict_keys() {
    const PASSWORD: &str = "planted-redis-password-e51a";
    let production = |policy: &str| {
        let redis = tls_redis(policy, PASSWORD);
        let mut env = without(&full_env(), &["REDIS_URL"]);
        env.push(("APP_ENV", "production".to_owned()));
        env.push(("REDIS_URL", redis.url()));
        env.push(redis.trust());
        let out = run(BIN, &["run"], &env);
        drop(redis);
        out
    };
    let out = production("allkeys-lru");
    out.assert_code(1);
    assert!(
        out.stderr.contains("maxmemory-policy allkeys-lru"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("noeviction"), "{}", out.stderr);
    assert!(!out.output().contains(PASSWORD), "{}", out.stderr);
    // The same Redis with noeviction passes, and start-up moves on to Postgres.
    let out = production("noeviction");
    out.assert_code(1);
    assert!(
        out.stderr.contains("Postgres is unreachable"),
        "{}",
        out.stderr
    );
}

#[test]
fn worker_run_in_production_refuses_an_echo_wait_shorter_than_a_worker_recovery() {
    // Orphan timeout 30 s + a 10 s heartbeat + the 10 s HTTP timeout: the echo of a part sent
    // just before its worker died can take 50 s to be read.
    let mut env = without(&full_env(), &["REDIS_URL"]);
    env.push(("REDIS_URL", "rediss://:pw@127.0.0.1:1/0".to_owned()));
    env.push(("ECHO_CONFIRM_SECS", "50".to_owned()));
    let production = |env: &[(&'static str, String)]| {
        let mut env = env.to_vec();
        env.push(("APP_ENV", "production".to_owned()));
        run(BIN, &["run"], &env)
    };
    let out = production(&env);
    out.assert_code(2);
    out.assert_invalid("ECHO_CONFIRM_SECS", "more than 50 s");
    // A shorter orphan timeout makes the same wait enough; so does a longer wait.
    for (var, value) in [
        ("WORKER_ORPHAN_TIMEOUT_SECS", "27"),
        ("ECHO_CONFIRM_SECS", "51"),
    ] {
        let mut ok = env.clone();
        ok.retain(|(k, _)| *k != var);
        ok.push((var, value.to_owned()));
        let out = production(&ok);
        out.assert_code(1);
        assert!(
            out.stderr.contains("Redis is unreachable"),
            "{}",
            out.stderr
        );
    }
    // Outside production the worker starts (tests shrink the wait) and warns instead.
    let out = run(BIN, &["run"], &env);
    out.assert_code(1);
    assert!(
        !out.stderr.contains("ECHO_CONFIRM_SECS is invalid"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("ECHO_CONFIRM_SECS should be more than 50 s"),
        "{}",
        out.stderr
    );
}
