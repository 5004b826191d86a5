//! Postgres over TLS: `sslmode`/`sslrootcert` in the database URLs, against a throwaway
//! cluster that takes TCP connections only over TLS, with a certificate from a test CA.

use igsales_tests::cli::{Outcome, run};
use igsales_tests::tls_postgres::{PASSWORD, TlsPostgres, tls_postgres};

const BIN: &str = env!("CARGO_BIN_EXE_worker");

fn migrate(url: &str) -> Outcome {
    run(
        BIN,
        &["migrate"],
        &[
            ("MIGRATION_DATABASE_URL", url.to_owned()),
            ("DATABASE_CONNECT_TIMEOUT_MS", "5000".to_owned()),
        ],
    )
}

/// `merchant create` opens the app's pool as `worker run` and `ingress` do (`Db::connect`).
fn app_connect(url: &str) -> Outcome {
    run(
        BIN,
        &["merchant", "create", "--name", "Shop"],
        &[("DATABASE_URL", url.to_owned())],
    )
}

#[track_caller]
fn assert_fails_naming(out: &Outcome, var: &str, what: &[&str]) {
    out.assert_code(1);
    assert!(
        out.stderr.contains("Postgres is unreachable at 127.0.0."),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&format!("({var})")), "{}", out.stderr);
    for w in what {
        assert!(out.stderr.contains(w), "expected {w:?} in: {}", out.stderr);
    }
    assert!(!out.output().contains(PASSWORD), "{}", out.output());
}

fn verify_full(pg: &TlsPostgres, ca: &str) -> String {
    pg.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    )
}

#[test]
fn verify_full_with_the_servers_ca_migrates_and_every_tls_mode_connects_as_libpq_would() {
    let pg = tls_postgres();
    let out = migrate(&verify_full(&pg, &pg.ca()));
    out.assert_code(0);
    assert!(out.stdout.contains("applied"), "{}", out.stdout);
    // The name the certificate holds (localhost) checks out too.
    migrate(&pg.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", pg.ca()),
    ))
    .assert_code(0);
    // verify-ca checks the chain only: 127.0.0.2 is not in the certificate, yet it connects.
    let out = migrate(&pg.url(
        "127.0.0.2",
        &format!("sslmode=verify-ca&sslrootcert={}", pg.ca()),
    ));
    out.assert_code(0);
    assert!(out.stdout.contains("nothing to apply"), "{}", out.stdout);
    // require and prefer encrypt without checking the certificate (libpq's meaning).
    migrate(&pg.url("127.0.0.2", "sslmode=require")).assert_code(0);
    migrate(&pg.url("127.0.0.2", "")).assert_code(0);
    // The app's pool connects the same way: it gets as far as the role check, which refuses
    // the superuser this cluster only has.
    let out = app_connect(&verify_full(&pg, &pg.ca()));
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("refusing to run as Postgres role \"postgres\": it is a superuser"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_certificate_that_does_not_check_out_or_a_plain_connection_is_refused_naming_why() {
    let pg = tls_postgres();
    // Another CA: the chain leads nowhere trusted.
    let wrong = verify_full(&pg, &pg.other_ca());
    let problem = ["invalid peer certificate: UnknownIssuer"];
    assert_fails_naming(&migrate(&wrong), "MIGRATION_DATABASE_URL", &problem);
    assert_fails_naming(&app_connect(&wrong), "DATABASE_URL", &problem);
    // require with a root certificate checks the chain, as libpq's does.
    let require = pg.url(
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={}", pg.other_ca()),
    );
    assert_fails_naming(&migrate(&require), "MIGRATION_DATABASE_URL", &problem);
    // The right CA, but a host the certificate does not name.
    let other_host = pg.url(
        "127.0.0.2",
        &format!("sslmode=verify-full&sslrootcert={}", pg.ca()),
    );
    assert_fails_naming(
        &migrate(&other_host),
        "MIGRATION_DATABASE_URL",
        &["invalid peer certificate: certificate not valid for name \"127.0.0.2\""],
    );
    // Plain text to a server that only takes TLS: the server's own refusal says so.
    assert_fails_naming(
        &migrate(&pg.url("127.0.0.1", "sslmode=disable")),
        "MIGRATION_DATABASE_URL",
        &["no pg_hba.conf entry", "no encryption"],
    );
    // A root certificate file that is not there.
    let missing = pg.url(
        "127.0.0.1",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    );
    assert_fails_naming(
        &app_connect(&missing),
        "DATABASE_URL",
        &["sslrootcert /nonexistent/ca.pem: cannot be read"],
    );
}

#[test]
fn production_refuses_database_urls_that_may_travel_in_clear_unless_they_stay_on_the_machine() {
    let remote = format!("postgres://owner:{PASSWORD}@db.example.com:5432/igsales");
    let production = |var: &'static str, url: &str| {
        run(
            BIN,
            &["migrate"],
            &[
                ("APP_ENV", "production".to_owned()),
                (var, url.to_owned()),
                ("DATABASE_CONNECT_TIMEOUT_MS", "300".to_owned()),
            ],
        )
    };
    for (var, url) in [
        ("MIGRATION_DATABASE_URL", remote.clone()),
        ("MIGRATION_DATABASE_URL", format!("{remote}?sslmode=prefer")),
        ("DATABASE_URL", format!("{remote}?sslmode=disable")),
    ] {
        let out = production(var, &url);
        out.assert_code(2);
        out.assert_invalid(var, "sslmode=require, verify-ca or verify-full");
        assert!(!out.output().contains(PASSWORD), "{}", out.output());
    }
    // On the machine, plain is allowed: the URL passes and only the closed port stops it.
    let out = production(
        "MIGRATION_DATABASE_URL",
        &format!("postgres://owner:{PASSWORD}@127.0.0.1:1/igsales"),
    );
    out.assert_code(1);
    assert!(
        out.stderr.contains("Postgres is unreachable"),
        "{}",
        out.stderr
    );
    // An sslmode libpq does not have is named with the modes it may be.
    let out = run(
        BIN,
        &["migrate"],
        &[("MIGRATION_DATABASE_URL", format!("{remote}?sslmode=verify"))],
    );
    out.assert_code(2);
    out.assert_invalid(
        "MIGRATION_DATABASE_URL",
        "sslmode must be disable, prefer, require, verify-ca or verify-full",
    );
}
