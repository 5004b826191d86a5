//! Environment configuration shared by `ingress` and `worker`.
//!
//! clap reads every variable (`env = …`) as a raw string; this crate turns the raw strings into
//! typed values and collects *every* problem before reporting, so one run names all missing and
//! invalid variables at once. Values are never echoed back: an error names the variable and the
//! form that was expected, which keeps secrets (and passwords inside URLs) out of the output.

mod args;
mod check;
mod values;

pub use args::{Common, CommonArgs, DbArgs, DbSettings, KeyArgs, RedisArgs, RedisSettings};
pub use check::{Checker, ConfigError, Problem, must};
pub use values::{
    AppEnv, GraphVersion, HttpUrl, KeyEntry, KeyRing, LogFormat, PgUrl, RedisUrl, Secret,
    parse_key_ring,
};

/// Exit code for configuration and usage errors (the same code clap uses).
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for runtime failures, including an unreachable Redis or Postgres at start.
pub const EXIT_RUNTIME: u8 = 1;

/// Installs the global tracing subscriber; `RUST_LOG` was validated by [`CommonArgs::check`].
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
