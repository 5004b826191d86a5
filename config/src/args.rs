//! The groups both binaries share. A group owned by one binary lives in that binary's crate.

use std::time::Duration;

use crate::check::Checker;
use crate::values::{
    AppEnv, GraphVersion, HttpUrl, KeyRing, LogFormat, PgUrl, RedisUrl, Secret, parse_key_ring,
};

fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|_| String::new())
}

crate::group! {
    /// What every command reads: the app environment and logging.
    pub mod common {
        /// `development` or `production` (production adds TLS and https rules).
        APP_ENV => app_env: AppEnv = default "development",
            parsed("development or production", AppEnv::parse);
        /// `text` or `json`.
        LOG_FORMAT => log_format: LogFormat = default "text", parsed("text or json", LogFormat::parse);
        /// A tracing filter such as `info,igsales=debug`.
        RUST_LOG => rust_log: Option<String> = optional,
            parsed("a tracing filter such as info,igsales=debug", log_filter);
    }
}

impl common::Settings {
    /// The validated `RUST_LOG`, `info` when unset.
    pub fn filter(&self) -> tracing_subscriber::EnvFilter {
        tracing_subscriber::EnvFilter::new(self.rust_log.as_deref().unwrap_or("info"))
    }
}

/// Production traffic to Postgres crosses the network encrypted: `sslmode` must be `require`
/// or stronger, unless every host is loopback or a Unix socket. Absent `sslmode` is libpq's
/// `prefer`, which falls back to plain text, so it is not enough.
pub fn pg_tls_rule(var: &'static str, url: Option<&PgUrl>, env: Option<AppEnv>, c: &mut Checker) {
    if let (Some(url), Some(AppEnv::Production)) = (url, env)
        && !url.ssl_mode().requires_tls()
        && !url.is_local()
    {
        c.invalid(
            var,
            "sslmode=require, verify-ca or verify-full when APP_ENV=production (plain or \
             sslmode=prefer is allowed only for a loopback host or a Unix socket)",
        );
    }
}

fn database_rules(p: &database::Partial, env: Option<AppEnv>, c: &mut Checker) {
    pg_tls_rule("DATABASE_URL", p.url.as_ref(), env, c);
}

crate::group! {
    /// Where the app's Postgres is (a login role in `igsales_app`, never the owner).
    pub mod database {
        @rules database_rules;
        /// The app's login role: postgres://USER:PASSWORD@HOST:5432/DB[?sslmode=verify-full&sslrootcert=CA.pem]
        /// (production: sslmode=require or stronger unless the host is loopback or a Unix socket).
        DATABASE_URL => url: PgUrl = required, parsed(PgUrl::FORM, PgUrl::parse);
    }
}

crate::group! {
    /// How connections to Postgres are pooled and bounded.
    pub mod db_pool {
        DATABASE_POOL_SIZE => size: u32 = default "10", int(1, 1000);
        DATABASE_STATEMENT_TIMEOUT_MS => statement_timeout: Duration = default "5000",
            millis(1, 3_600_000);
        /// How long a transaction may sit idle before Postgres ends the session.
        DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS => idle_in_transaction_timeout: Duration =
            default "30000", millis(1, 3_600_000);
        /// Connecting, and waiting for a free pooled connection.
        DATABASE_CONNECT_TIMEOUT_MS => connect_timeout: Duration = default "5000",
            millis(1, 600_000);
    }
}

/// The app's Postgres: where it is and how it is pooled.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    #[command(flatten)]
    pub url: database::Args,
    #[command(flatten)]
    pub pool: db_pool::Args,
}

#[derive(Debug, Clone)]
pub struct DbSettings {
    pub url: PgUrl,
    pub pool: db_pool::Settings,
}

impl DbArgs {
    pub fn check(&self, c: &mut Checker, env: Option<AppEnv>) -> Option<DbSettings> {
        let url = self.url.check(c, env);
        let pool = self.pool.check(c, env);
        Some(DbSettings {
            url: url?.url,
            pool: pool?,
        })
    }
}

fn redis_rules(p: &redis::Partial, env: Option<AppEnv>, c: &mut Checker) {
    if let (Some(url), Some(AppEnv::Production)) = (&p.url, env)
        && !(url.is_tls() && url.has_password())
    {
        c.invalid(
            "REDIS_URL",
            "rediss:// with a password when APP_ENV=production",
        );
    }
    // Sentinel mode needs both the sentinels and the name of the master they watch.
    match (&p.sentinels, &p.sentinel_master) {
        (Some(Some(_)), Some(None)) => c.invalid(
            "REDIS_SENTINEL_MASTER",
            "the master's name, set together with REDIS_SENTINELS",
        ),
        (Some(None), Some(Some(_))) => c.invalid(
            "REDIS_SENTINELS",
            "comma-separated host:port, set together with REDIS_SENTINEL_MASTER",
        ),
        _ => {}
    }
    if let (Some(None), Some(Some(_))) = (&p.sentinels, &p.sentinel_password) {
        c.invalid(
            "REDIS_SENTINEL_PASSWORD",
            "set only together with REDIS_SENTINELS",
        );
    }
}

/// `host:port[,host:port…]`.
fn sentinel_list(s: &str) -> Result<Vec<(String, u16)>, String> {
    let list: Vec<(String, u16)> = s
        .split(',')
        .map(str::trim)
        .map(|one| {
            let (host, port) = one.rsplit_once(':').ok_or_else(String::new)?;
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(String::new)?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._:".contains(&b);
            if host.is_empty() || !host.bytes().all(plain) {
                return Err(String::new());
            }
            Ok((host.to_owned(), port))
        })
        .collect::<Result<_, String>>()?;
    if list.is_empty() {
        return Err(String::new());
    }
    Ok(list)
}

/// A Sentinel master name (`SENTINEL MONITOR <name> …`).
fn master_name(s: &str) -> Result<String, String> {
    let ok = s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(String::new())
    }
}

crate::group! {
    /// The Redis connection used for queues, dedupe claims and rate-limit windows.
    pub mod redis {
        @app_env app_env;
        @rules redis_rules;
        /// redis://[:PASSWORD@]HOST:6379[/DB] or rediss://… (production: rediss with a password).
        REDIS_URL => url: RedisUrl = required, parsed(RedisUrl::FORM, RedisUrl::parse);
        REDIS_CONNECT_TIMEOUT_MS => connect_timeout: Duration = default "3000", millis(1, 600_000);
        /// The longest wait for one Redis reply before the command fails.
        REDIS_RESPONSE_TIMEOUT_MS => response_timeout: Duration = default "3000",
            millis(1, 600_000);
        /// Sentinels to find the master through (host:port, comma-separated); REDIS_URL then
        /// gives only the password, database and TLS (rediss:// also for the sentinels).
        REDIS_SENTINELS => sentinels: Option<Vec<(String, u16)>> = optional,
            parsed("comma-separated host:port, such as redis-s1:26379,redis-s2:26379", sentinel_list);
        /// The master's name the sentinels monitor (with REDIS_SENTINELS).
        REDIS_SENTINEL_MASTER => sentinel_master: Option<String> = optional,
            parsed("a name of letters, digits, - _ .", master_name);
        /// The sentinels' own password (their requirepass); unset: they are asked without AUTH.
        REDIS_SENTINEL_PASSWORD => sentinel_password: Option<Secret> = optional,
            secret("the sentinels' password");
    }
}

impl redis::Settings {
    /// Sentinel mode: the sentinels and the master's name (the rules allow both or neither).
    pub fn sentinel(&self) -> Option<(&[(String, u16)], &str)> {
        match (&self.sentinels, &self.sentinel_master) {
            (Some(list), Some(name)) => Some((list, name)),
            _ => None,
        }
    }

    /// Where Redis is, for messages: REDIS_URL's host, or the sentinels and master name.
    pub fn location(&self) -> String {
        match self.sentinel() {
            None => self.url.location(),
            Some((list, name)) => {
                let list: Vec<String> = list.iter().map(|(h, p)| format!("{h}:{p}")).collect();
                format!("master {name} via sentinels {}", list.join(","))
            }
        }
    }
}

crate::group! {
    /// The token-encryption key ring.
    pub mod keys {
        /// <kver>:<base64 of 32 bytes>[,…]; the first encrypts, all decrypt.
        ENCRYPTION_KEY => ring: KeyRing = required, parsed(KeyRing::FORM, parse_key_ring);
    }
}

crate::group! {
    /// Meta's Graph API as the binaries that call it reach it.
    pub mod graph {
        GRAPH_API_VERSION => version: GraphVersion = required,
            parsed(GraphVersion::FORM, GraphVersion::parse);
        GRAPH_API_BASE_URL => base_url: HttpUrl = default "https://graph.instagram.com",
            parsed(HttpUrl::FORM, HttpUrl::parse);
        /// Timeout of one call to Meta's OAuth or Graph API.
        META_HTTP_TIMEOUT_MS => timeout: Duration = default "10000", millis(1, 120_000);
        /// Calls to Meta in flight at once (each holds a blocking thread while it waits).
        META_HTTP_MAX_CONCURRENCY => max_concurrency: usize = default "64",
            amount("a count", 1, 1024);
    }
}

crate::group! {
    /// Name lookups of outbound HTTP clients (Meta's, the model API's).
    pub mod dns {
        /// How long a looked-up host name is reused before a new lookup.
        HTTP_DNS_CACHE_SECS => cache: Duration = default "30", secs(0, 3600);
    }
}

pub use common::{Args as CommonArgs, Settings as Common};
pub use graph::{Args as GraphArgs, Settings as GraphSettings};
pub use keys::Args as KeyArgs;
pub use redis::{Args as RedisArgs, Settings as RedisSettings};

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, env: AppEnv) -> Result<(), String> {
        let args = database::Args {
            DATABASE_URL: Some(url.to_owned()),
        };
        let mut c = Checker::new();
        let settings = args.check(&mut c, Some(env));
        c.finish().map_err(|e| e.to_string())?;
        assert!(settings.is_some());
        Ok(())
    }

    #[test]
    fn production_refuses_a_database_url_that_may_cross_the_network_in_clear() {
        for weak in [
            "postgres://app:hunter2@db.example.com/igsales",
            "postgres://app:hunter2@db.example.com/igsales?sslmode=prefer",
            "postgres://app:hunter2@db.example.com/igsales?sslmode=disable",
            "postgres://app:hunter2@localhost/igsales?host=db.example.com",
        ] {
            let err = check(weak, AppEnv::Production).expect_err(weak);
            assert!(
                err.contains("DATABASE_URL is invalid: expected sslmode=require, verify-ca or verify-full when APP_ENV=production"),
                "{err}"
            );
            assert!(err.contains("loopback host or a Unix socket"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
            check(weak, AppEnv::Development).expect("development allows it");
        }
        for strong in [
            "postgres://app:pw@db.example.com/igsales?sslmode=require",
            "postgres://app:pw@db.example.com/igsales?sslmode=verify-ca&sslrootcert=/ca.pem",
            "postgres://app:pw@db.example.com/igsales?sslmode=verify-full",
            "postgres://app:pw@db.example.com/igsales?sslrootcert=system",
            "postgres://app:pw@127.0.0.1:5432/igsales",
            "postgres://app:pw@localhost/igsales?sslmode=disable",
            "postgres://app:pw@%2Frun%2Fpostgresql/igsales",
        ] {
            check(strong, AppEnv::Production).expect(strong);
        }
    }

    #[test]
    fn an_unknown_sslmode_is_named_with_the_variable_and_the_modes() {
        let err = check(
            "postgres://app:hunter2@db/igsales?sslmode=allow",
            AppEnv::Development,
        )
        .expect_err("allow is not supported");
        assert!(err.contains("DATABASE_URL is invalid"), "{err}");
        assert!(
            err.contains("sslmode must be disable, prefer, require, verify-ca or verify-full"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
}
