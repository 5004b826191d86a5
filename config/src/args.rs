//! Argument groups that several commands share. Every field is a raw string so that the
//! [`Checker`] (not clap) judges it: clap would stop at the first bad value and echo it.

use std::time::Duration;

use clap::Args;

use crate::check::Checker;
use crate::values::{
    AppEnv, GraphVersion, HttpUrl, KeyRing, LogFormat, PgUrl, RedisUrl, parse_key_ring,
};

fn positive_u32(max: u32) -> impl FnOnce(&str) -> Result<u32, String> {
    move |s| {
        s.parse::<u32>()
            .ok()
            .filter(|v| (1..=max).contains(v))
            .ok_or_else(String::new)
    }
}

/// Variables every command reads.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// `development` or `production` (production adds TLS and https rules).
    #[arg(
        long,
        env = "APP_ENV",
        default_value = "development",
        hide_env_values = true
    )]
    pub app_env: String,
    /// `text` or `json`.
    #[arg(
        long,
        env = "LOG_FORMAT",
        default_value = "text",
        hide_env_values = true
    )]
    pub log_format: String,
    /// A tracing filter such as `info,igsales=debug`.
    #[arg(long, env = "RUST_LOG", hide_env_values = true)]
    pub rust_log: Option<String>,
}

pub struct Common {
    pub app_env: AppEnv,
    pub log_format: LogFormat,
    pub filter: tracing_subscriber::EnvFilter,
}

impl CommonArgs {
    pub fn check(&self, c: &mut Checker) -> Option<Common> {
        let app_env = c.value("APP_ENV", &self.app_env, "development or production", |s| {
            AppEnv::parse(s)
        });
        let log_format = c.value("LOG_FORMAT", &self.log_format, "text or json", |s| {
            LogFormat::parse(s)
        });
        let filter = c
            .optional(
                "RUST_LOG",
                self.rust_log.as_deref(),
                "a tracing filter such as info,igsales=debug",
                |s| tracing_subscriber::EnvFilter::try_new(s).map_err(|_| String::new()),
            )
            .map(|f| f.unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info")));
        Some(Common {
            app_env: app_env?,
            log_format: log_format?,
            filter: filter?,
        })
    }
}

/// The app's Postgres connection (a login role in `igsales_app`, never the owner).
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// The app's login role: postgres://USER:PASSWORD@HOST:5432/DB.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[arg(
        long,
        env = "DATABASE_POOL_SIZE",
        default_value = "10",
        hide_env_values = true
    )]
    pub database_pool_size: String,
    #[arg(
        long,
        env = "DATABASE_STATEMENT_TIMEOUT_MS",
        default_value = "5000",
        hide_env_values = true
    )]
    pub database_statement_timeout_ms: String,
    /// How long a transaction may sit idle before Postgres ends the session.
    #[arg(
        long,
        env = "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default_value = "30000",
        hide_env_values = true
    )]
    pub database_idle_in_transaction_timeout_ms: String,
    /// Connecting, and waiting for a free pooled connection.
    #[arg(
        long,
        env = "DATABASE_CONNECT_TIMEOUT_MS",
        default_value = "5000",
        hide_env_values = true
    )]
    pub database_connect_timeout_ms: String,
}

#[derive(Debug, Clone)]
pub struct DbSettings {
    pub url: PgUrl,
    pub pool_size: u32,
    pub statement_timeout: Duration,
    pub idle_in_transaction_timeout: Duration,
    pub connect_timeout: Duration,
}

impl DbArgs {
    pub fn check(&self, c: &mut Checker) -> Option<DbSettings> {
        let url = c.required(
            "DATABASE_URL",
            self.database_url.as_deref(),
            PgUrl::FORM,
            PgUrl::parse,
        );
        self.check_with_url(c, url)
    }

    /// Pool settings around a URL checked elsewhere (`worker migrate` uses the owner's URL).
    pub fn check_with_url(&self, c: &mut Checker, url: Option<PgUrl>) -> Option<DbSettings> {
        let pool_size = c.value(
            "DATABASE_POOL_SIZE",
            &self.database_pool_size,
            "an integer 1–1000",
            positive_u32(1000),
        );
        let statement_timeout = c.millis(
            "DATABASE_STATEMENT_TIMEOUT_MS",
            &self.database_statement_timeout_ms,
            1,
            3_600_000,
        );
        let idle = c.millis(
            "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
            &self.database_idle_in_transaction_timeout_ms,
            1,
            3_600_000,
        );
        let connect = c.millis(
            "DATABASE_CONNECT_TIMEOUT_MS",
            &self.database_connect_timeout_ms,
            1,
            600_000,
        );
        Some(DbSettings {
            url: url?,
            pool_size: pool_size?,
            statement_timeout: statement_timeout?,
            idle_in_transaction_timeout: idle?,
            connect_timeout: connect?,
        })
    }
}

/// The Redis connection used for queues, dedupe claims and rate-limit windows.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// redis://[:PASSWORD@]HOST:6379[/DB] or rediss://… (production: rediss with a password).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    #[arg(
        long,
        env = "REDIS_CONNECT_TIMEOUT_MS",
        default_value = "3000",
        hide_env_values = true
    )]
    pub redis_connect_timeout_ms: String,
    /// The longest wait for one Redis reply before the command fails.
    #[arg(
        long,
        env = "REDIS_RESPONSE_TIMEOUT_MS",
        default_value = "3000",
        hide_env_values = true
    )]
    pub redis_response_timeout_ms: String,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: RedisUrl,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

impl RedisArgs {
    pub fn check(&self, c: &mut Checker, env: Option<AppEnv>) -> Option<RedisSettings> {
        let url = c.required(
            "REDIS_URL",
            self.redis_url.as_deref(),
            RedisUrl::FORM,
            RedisUrl::parse,
        );
        if let (Some(url), Some(AppEnv::Production)) = (&url, env)
            && !(url.is_tls() && url.has_password())
        {
            c.invalid(
                "REDIS_URL",
                "rediss:// with a password when APP_ENV=production",
            );
        }
        let connect = c.millis(
            "REDIS_CONNECT_TIMEOUT_MS",
            &self.redis_connect_timeout_ms,
            1,
            600_000,
        );
        let response = c.millis(
            "REDIS_RESPONSE_TIMEOUT_MS",
            &self.redis_response_timeout_ms,
            1,
            600_000,
        );
        Some(RedisSettings {
            url: url?,
            connect_timeout: connect?,
            response_timeout: response?,
        })
    }
}

/// The token-encryption key ring.
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// <kver>:<base64 of 32 bytes>[,…]; the first encrypts, all decrypt.
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,
}

impl KeyArgs {
    pub fn check(&self, c: &mut Checker) -> Option<KeyRing> {
        c.required(
            "ENCRYPTION_KEY",
            self.encryption_key.as_deref(),
            KeyRing::FORM,
            parse_key_ring,
        )
    }
}

/// Meta's Graph API as the binaries that call it reach it.
#[derive(Debug, Clone, Args)]
pub struct GraphArgs {
    #[arg(long, env = "GRAPH_API_VERSION", hide_env_values = true)]
    pub graph_api_version: Option<String>,
    #[arg(
        long,
        env = "GRAPH_API_BASE_URL",
        default_value = "https://graph.instagram.com",
        hide_env_values = true
    )]
    pub graph_api_base_url: String,
    /// Timeout of one call to Meta's OAuth or Graph API.
    #[arg(
        long,
        env = "META_HTTP_TIMEOUT_MS",
        default_value = "10000",
        hide_env_values = true
    )]
    pub meta_http_timeout_ms: String,
    /// How long a looked-up host name (Meta's, the model API's) is reused before a new lookup.
    #[arg(
        long,
        env = "HTTP_DNS_CACHE_SECS",
        default_value = "30",
        hide_env_values = true
    )]
    pub http_dns_cache_secs: String,
}

#[derive(Debug, Clone)]
pub struct GraphSettings {
    pub version: GraphVersion,
    pub base_url: HttpUrl,
    pub timeout: Duration,
    pub dns_cache: Duration,
}

impl GraphArgs {
    pub fn check(&self, c: &mut Checker) -> Option<GraphSettings> {
        let version = c.required(
            "GRAPH_API_VERSION",
            self.graph_api_version.as_deref(),
            GraphVersion::FORM,
            GraphVersion::parse,
        );
        let base_url = c.value(
            "GRAPH_API_BASE_URL",
            &self.graph_api_base_url,
            HttpUrl::FORM,
            HttpUrl::parse,
        );
        let timeout = c.millis(
            "META_HTTP_TIMEOUT_MS",
            &self.meta_http_timeout_ms,
            1,
            120_000,
        );
        let dns_cache = c.secs("HTTP_DNS_CACHE_SECS", &self.http_dns_cache_secs, 0, 3600);
        Some(GraphSettings {
            version: version?,
            base_url: base_url?,
            timeout: timeout?,
            dns_cache: dns_cache?,
        })
    }
}
