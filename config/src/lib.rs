//! Environment configuration and process setup (logging, metrics recorder, exit codes) shared
//! by `ingress` and `worker`.
//!
//! clap reads every variable (`env = …`) as a raw string; this crate turns the raw strings into
//! typed values and collects *every* problem before reporting, so one run names all missing and
//! invalid variables at once. Values are never echoed back: an error names the variable and the
//! form that was expected, which keeps secrets (and passwords inside URLs) out of the output.

use std::process::ExitCode;

mod args;
mod check;
pub mod group;
mod values;

pub use args::{
    Common, CommonArgs, DbArgs, DbSettings, GraphArgs, GraphSettings, KeyArgs, RedisArgs,
    RedisSettings, common, database, db_pool, dns, graph, keys, pg_tls_rule, redis,
};
pub use check::{Checker, ConfigError, Problem, Unit, must};
pub use values::{
    AppEnv, GraphVersion, HttpUrl, KeyEntry, KeyRing, LogFormat, PgUrl, RedisUrl, Secret, SslMode,
    SslRoots, parse_key_ring,
};

/// Exit code for configuration and usage errors (the same code clap uses).
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for runtime failures, including an unreachable Redis or Postgres at start.
pub const EXIT_RUNTIME: u8 = 1;

/// The shared shape of both binaries' `main`: report configuration problems (exit 2), set up
/// logging, run `body` on a multi-threaded runtime, and turn its error into exit 1.
pub fn run_checked<T, F, Fut>(checked: Result<(Common, T), ConfigError>, body: F) -> ExitCode
where
    F: FnOnce(T) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (common, settings) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(common.log_format, common.filter());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(body(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the context chain; our errors never carry secrets or URLs.
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

static PROMETHEUS: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
    std::sync::OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use (metrics recorded before it
/// exists are lost, so processes call this at start).
pub fn prometheus() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PROMETHEUS
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0,
                    ],
                )
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// Resolves on SIGTERM (how orchestrators stop us) or Ctrl-C, then logs that the process is
/// finishing `what` (e.g. "in-flight requests").
pub async fn shutdown_signal(what: &str) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a SIGTERM handler, Ctrl-C alone stops us.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; finishing {what}");
}

/// `healthcheck` for a container image without a shell or curl: GETs
/// `http://127.0.0.1:{port}/healthz` (port from `port_var`, else `default_port`) and exits 0 when
/// it answers 200, 1 otherwise.
pub fn healthcheck(port_var: &str, default_port: u16) -> ExitCode {
    use std::io::{Read, Write};
    let port = std::env::var(port_var)
        .ok()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .unwrap_or(default_port);
    let probe = || -> std::io::Result<bool> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let timeout = std::time::Duration::from_secs(2);
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200"))
    };
    match probe() {
        Ok(true) => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_RUNTIME),
    }
}

/// Installs the global tracing subscriber; `RUST_LOG` was validated by the `common` group.
pub fn init_tracing(format: LogFormat, filter: tracing_subscriber::EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` fails only when a subscriber is already set (tests calling twice): harmless.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
