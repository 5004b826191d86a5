//! `ingress` configuration (SPEC §3): read by clap from the environment, judged by the
//! [`Checker`] so that every problem is reported in one run without echoing any value.

use std::time::Duration;

use clap::Parser;
use igsales_config::{
    AppEnv, Checker, Common, CommonArgs, ConfigError, DbArgs, DbSettings, GraphArgs, GraphSettings,
    HttpUrl, KeyArgs, KeyRing, RedisArgs, RedisSettings, Secret, must,
};

#[derive(Debug, Parser)]
#[command(
    name = "ingress",
    version,
    about = "igsales HTTP front door: webhooks, OAuth, Meta callbacks, health"
)]
pub struct IngressArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// OAuth client id (for Instagram Login: the Instagram app id).
    #[arg(long, env = "META_APP_ID", hide_env_values = true)]
    meta_app_id: Option<String>,
    /// Webhook signing and OAuth client secret.
    #[arg(long, env = "IG_APP_SECRET", hide_env_values = true)]
    ig_app_secret: Option<String>,
    /// A second accepted webhook-signing secret.
    #[arg(long, env = "META_APP_SECRET", hide_env_values = true)]
    meta_app_secret: Option<String>,
    #[command(flatten)]
    graph: GraphArgs,
    /// Public base URL; redirect_uri = {API_BASE_URL}/oauth/instagram/callback.
    #[arg(long, env = "API_BASE_URL", hide_env_values = true)]
    api_base_url: Option<String>,
    #[arg(long, env = "PORT", hide_env_values = true)]
    port: Option<String>,
    #[arg(long, env = "META_WEBHOOK_VERIFY_TOKEN", hide_env_values = true)]
    meta_webhook_verify_token: Option<String>,
    /// Bearer token of the /v1 API (at least 32 characters).
    #[arg(long, env = "ADMIN_API_TOKEN", hide_env_values = true)]
    admin_api_token: Option<String>,
    #[arg(long, env = "OAUTH_SUCCESS_REDIRECT_URL", hide_env_values = true)]
    oauth_success_redirect_url: Option<String>,
    #[arg(long, env = "OAUTH_FAILURE_REDIRECT_URL", hide_env_values = true)]
    oauth_failure_redirect_url: Option<String>,
    #[arg(
        long,
        env = "IG_OAUTH_BASE_URL",
        default_value = "https://api.instagram.com",
        hide_env_values = true
    )]
    ig_oauth_base_url: String,
    #[arg(
        long,
        env = "IG_AUTHORIZE_URL",
        default_value = "https://www.instagram.com/oauth/authorize",
        hide_env_values = true
    )]
    ig_authorize_url: String,
    /// Comma-separated origins allowed to call /v1 from a browser (empty: no CORS).
    #[arg(
        long,
        env = "CORS_ALLOWED_ORIGINS",
        default_value = "",
        hide_env_values = true
    )]
    cors_allowed_origins: String,
    #[arg(
        long,
        env = "WEBHOOK_MAX_BODY_BYTES",
        default_value = "1048576",
        hide_env_values = true
    )]
    webhook_max_body_bytes: String,
    /// How many unreadable signed payloads `dlq:webhook_invalid` keeps (newest first).
    #[arg(
        long,
        env = "WEBHOOK_INVALID_DLQ_MAX",
        default_value = "10000",
        hide_env_values = true
    )]
    webhook_invalid_dlq_max: String,
    /// The whole of one delivery's work, under Meta's 5 s: later → 503 and Meta delivers again.
    #[arg(
        long,
        env = "WEBHOOK_DEADLINE_MS",
        default_value = "4000",
        hide_env_values = true
    )]
    webhook_deadline_ms: String,
    /// Deliveries worked on at once; one more is answered 503 at once (Meta delivers it again).
    #[arg(
        long,
        env = "WEBHOOK_MAX_IN_FLIGHT",
        default_value = "2048",
        hide_env_values = true
    )]
    webhook_max_in_flight: String,
    /// How long an event's dedupe claim lives (Meta retries for up to 36 h).
    #[arg(
        long,
        env = "WEBHOOK_DEDUPE_TTL_SECS",
        default_value = "172800",
        hide_env_values = true
    )]
    webhook_dedupe_ttl_secs: String,
    /// Account → merchant cache: how long a found account is remembered (at most 60).
    #[arg(
        long,
        env = "ACCOUNT_CACHE_HIT_SECS",
        default_value = "60",
        hide_env_values = true
    )]
    account_cache_hit_secs: String,
    /// … and an unknown one (at most 5).
    #[arg(
        long,
        env = "ACCOUNT_CACHE_MISS_SECS",
        default_value = "5",
        hide_env_values = true
    )]
    account_cache_miss_secs: String,
    /// Calls to Meta in flight at once (each holds a blocking thread).
    #[arg(
        long,
        env = "META_HTTP_MAX_CONCURRENCY",
        default_value = "16",
        hide_env_values = true
    )]
    meta_http_max_concurrency: String,
    /// Lifetime of an OAuth connect ticket and its state.
    #[arg(
        long,
        env = "OAUTH_STATE_TTL_SECS",
        default_value = "600",
        hide_env_values = true
    )]
    oauth_state_ttl_secs: String,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(
        long,
        env = "SHUTDOWN_TIMEOUT_MS",
        default_value = "10000",
        hide_env_values = true
    )]
    shutdown_timeout_ms: String,
}

/// Every ingress setting, validated.
#[derive(Debug, Clone)]
pub struct IngressSettings {
    pub app_env: AppEnv,
    pub db: DbSettings,
    pub redis: RedisSettings,
    pub keys: KeyRing,
    pub meta_app_id: String,
    pub ig_app_secret: Secret,
    pub meta_app_secret: Option<Secret>,
    pub graph: GraphSettings,
    pub api_base_url: HttpUrl,
    pub port: u16,
    pub webhook_verify_token: Secret,
    pub admin_api_token: Secret,
    pub oauth_success_redirect_url: HttpUrl,
    pub oauth_failure_redirect_url: HttpUrl,
    pub ig_oauth_base_url: HttpUrl,
    pub ig_authorize_url: HttpUrl,
    pub cors_allowed_origins: Vec<String>,
    pub webhook_max_body_bytes: usize,
    pub webhook_invalid_dlq_max: usize,
    pub webhook_deadline: Duration,
    pub webhook_max_in_flight: usize,
    pub webhook_dedupe_ttl: Duration,
    pub account_cache_hit: Duration,
    pub account_cache_miss: Duration,
    pub meta_http_max_concurrency: usize,
    pub oauth_state_ttl: Duration,
    pub shutdown_timeout: Duration,
}

impl IngressSettings {
    /// `{API_BASE_URL}/oauth/instagram/callback`: must match Meta's configuration exactly.
    pub fn redirect_uri(&self) -> String {
        format!("{}/oauth/instagram/callback", self.api_base_url.base())
    }
}

fn count(max: usize) -> impl FnOnce(&str) -> Result<usize, String> {
    move |s| {
        s.parse::<usize>()
            .ok()
            .filter(|v| (1..=max).contains(v))
            .ok_or_else(String::new)
    }
}

fn secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

fn origin(s: &str) -> Result<String, String> {
    let url = url::Url::parse(s).map_err(|_| String::new())?;
    let serialized = url.origin().ascii_serialization();
    let bare = matches!(url.scheme(), "http" | "https")
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && serialized == s.trim_end_matches('/');
    if bare {
        Ok(serialized)
    } else {
        Err(String::new())
    }
}

impl IngressArgs {
    pub fn check(self) -> Result<(Common, IngressSettings), ConfigError> {
        let mut c = Checker::new();
        let common = self.common.check(&mut c);
        let env = common.as_ref().map(|co| co.app_env);
        let db = self.db.check(&mut c);
        let redis = self.redis.check(&mut c, env);
        let keys = self.keys.check(&mut c);
        let meta_app_id = c.required(
            "META_APP_ID",
            self.meta_app_id.as_deref(),
            "the app id, digits",
            |s| {
                if s.bytes().all(|b| b.is_ascii_digit()) {
                    Ok(s.to_owned())
                } else {
                    Err(String::new())
                }
            },
        );
        let ig_app_secret = c.required(
            "IG_APP_SECRET",
            self.ig_app_secret.as_deref(),
            "the app secret",
            secret,
        );
        let meta_app_secret = c.optional(
            "META_APP_SECRET",
            self.meta_app_secret.as_deref(),
            "the app secret",
            secret,
        );
        let graph = self.graph.check(&mut c);
        let api_base_url = c.required(
            "API_BASE_URL",
            self.api_base_url.as_deref(),
            HttpUrl::FORM,
            HttpUrl::parse,
        );
        let port = c.required("PORT", self.port.as_deref(), "an integer 1–65535", |s| {
            s.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(String::new)
        });
        let webhook_verify_token = c.required(
            "META_WEBHOOK_VERIFY_TOKEN",
            self.meta_webhook_verify_token.as_deref(),
            "the token entered in Meta's webhook settings",
            secret,
        );
        let admin_api_token = c.required(
            "ADMIN_API_TOKEN",
            self.admin_api_token.as_deref(),
            "at least 32 characters",
            |s| {
                if s.chars().count() >= 32 {
                    Ok(Secret::new(s))
                } else {
                    Err(String::new())
                }
            },
        );
        let success = c.required(
            "OAUTH_SUCCESS_REDIRECT_URL",
            self.oauth_success_redirect_url.as_deref(),
            HttpUrl::FORM,
            HttpUrl::parse,
        );
        let failure = c.required(
            "OAUTH_FAILURE_REDIRECT_URL",
            self.oauth_failure_redirect_url.as_deref(),
            HttpUrl::FORM,
            HttpUrl::parse,
        );
        let ig_oauth_base_url = c.value(
            "IG_OAUTH_BASE_URL",
            &self.ig_oauth_base_url,
            HttpUrl::FORM,
            HttpUrl::parse,
        );
        let ig_authorize_url = c.value(
            "IG_AUTHORIZE_URL",
            &self.ig_authorize_url,
            HttpUrl::FORM,
            HttpUrl::parse,
        );
        let cors = c.value(
            "CORS_ALLOWED_ORIGINS",
            &self.cors_allowed_origins,
            "comma-separated origins such as https://dashboard.example.com",
            |s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(origin)
                    .collect::<Result<Vec<_>, _>>()
            },
        );
        let max_body = c.value(
            "WEBHOOK_MAX_BODY_BYTES",
            &self.webhook_max_body_bytes,
            "bytes, 1024–67108864",
            |s| {
                s.parse::<usize>()
                    .ok()
                    .filter(|n| (1024..=64 * 1024 * 1024).contains(n))
                    .ok_or_else(String::new)
            },
        );

        let dlq_max = c.value(
            "WEBHOOK_INVALID_DLQ_MAX",
            &self.webhook_invalid_dlq_max,
            "a count, 1–1000000",
            count(1_000_000),
        );
        let deadline = c.millis("WEBHOOK_DEADLINE_MS", &self.webhook_deadline_ms, 1, 4_900);
        let max_in_flight = c.value(
            "WEBHOOK_MAX_IN_FLIGHT",
            &self.webhook_max_in_flight,
            "a count, 1–1000000",
            count(1_000_000),
        );
        let dedupe_ttl = c.secs(
            "WEBHOOK_DEDUPE_TTL_SECS",
            &self.webhook_dedupe_ttl_secs,
            1,
            2592000,
        );
        let cache_hit = c.secs(
            "ACCOUNT_CACHE_HIT_SECS",
            &self.account_cache_hit_secs,
            1,
            60,
        );
        let cache_miss = c.secs(
            "ACCOUNT_CACHE_MISS_SECS",
            &self.account_cache_miss_secs,
            1,
            5,
        );
        let meta_concurrency = c.value(
            "META_HTTP_MAX_CONCURRENCY",
            &self.meta_http_max_concurrency,
            "a count, 1–256",
            count(256),
        );
        let oauth_ttl = c.secs("OAUTH_STATE_TTL_SECS", &self.oauth_state_ttl_secs, 1, 3600);
        let shutdown = c.millis("SHUTDOWN_TIMEOUT_MS", &self.shutdown_timeout_ms, 1, 600_000);

        if env == Some(AppEnv::Production) {
            for (var, url) in [
                ("API_BASE_URL", &api_base_url),
                ("OAUTH_SUCCESS_REDIRECT_URL", &success),
                ("OAUTH_FAILURE_REDIRECT_URL", &failure),
            ] {
                if url.as_ref().is_some_and(|u| !u.is_https()) {
                    c.invalid(var, "an https:// URL when APP_ENV=production");
                }
            }
        }

        c.finish()?;
        Ok((
            must(common),
            IngressSettings {
                app_env: must(env),
                db: must(db),
                redis: must(redis),
                keys: must(keys),
                meta_app_id: must(meta_app_id),
                ig_app_secret: must(ig_app_secret),
                meta_app_secret: must(meta_app_secret),
                graph: must(graph),
                api_base_url: must(api_base_url),
                port: must(port),
                webhook_verify_token: must(webhook_verify_token),
                admin_api_token: must(admin_api_token),
                oauth_success_redirect_url: must(success),
                oauth_failure_redirect_url: must(failure),
                ig_oauth_base_url: must(ig_oauth_base_url),
                ig_authorize_url: must(ig_authorize_url),
                cors_allowed_origins: must(cors),
                webhook_max_body_bytes: must(max_body),
                webhook_invalid_dlq_max: must(dlq_max),
                webhook_deadline: must(deadline),
                webhook_max_in_flight: must(max_in_flight),
                webhook_dedupe_ttl: must(dedupe_ttl),
                account_cache_hit: must(cache_hit),
                account_cache_miss: must(cache_miss),
                meta_http_max_concurrency: must(meta_concurrency),
                oauth_state_ttl: must(oauth_ttl),
                shutdown_timeout: must(shutdown),
            },
        ))
    }
}
