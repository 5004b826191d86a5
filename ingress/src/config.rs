//! `ingress` configuration (SPEC §3): the shared groups it needs and the groups it owns, read
//! by clap from the environment and judged by the [`Checker`] so that every problem is reported
//! in one run without echoing any value.

use std::time::Duration;

use clap::Parser;
use igsales_config::{
    AppEnv, Checker, Common, CommonArgs, ConfigError, DbArgs, DbSettings, GraphArgs, GraphSettings,
    HttpUrl, KeyArgs, RedisArgs, RedisSettings, Secret, dns, keys, must,
};

fn digits(s: &str) -> Result<String, String> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s.to_owned())
    } else {
        Err(String::new())
    }
}

fn long_secret(s: &str) -> Result<Secret, String> {
    if s.chars().count() >= 32 {
        Ok(Secret::new(s))
    } else {
        Err(String::new())
    }
}

fn port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(String::new)
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

fn origins(s: &str) -> Result<Vec<String>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(origin)
        .collect()
}

fn http_url(s: &str) -> Result<HttpUrl, String> {
    HttpUrl::parse(s)
}

igsales_config::group! {
    /// The Meta app: its id and the secrets that sign webhooks and authenticate OAuth.
    pub mod app {
        /// OAuth client id (for Instagram Login: the Instagram app id).
        META_APP_ID => id: String = required, parsed("the app id, digits", digits);
        /// Webhook signing and OAuth client secret.
        IG_APP_SECRET => secret: Secret = required, secret("the app secret");
        /// A second accepted webhook-signing secret.
        META_APP_SECRET => second_secret: Option<Secret> = optional, secret("the app secret");
    }
}

fn oauth_rules(p: &oauth::Partial, env: Option<AppEnv>, c: &mut Checker) {
    if env != Some(AppEnv::Production) {
        return;
    }
    for (var, url) in [
        ("API_BASE_URL", &p.api_base_url),
        ("OAUTH_SUCCESS_REDIRECT_URL", &p.success_redirect_url),
        ("OAUTH_FAILURE_REDIRECT_URL", &p.failure_redirect_url),
    ] {
        if url.as_ref().is_some_and(|u| !u.is_https()) {
            c.invalid(var, "an https:// URL when APP_ENV=production");
        }
    }
}

igsales_config::group! {
    /// The Instagram Login connect flow.
    pub mod oauth {
        @app_env app_env;
        @rules oauth_rules;
        /// Public base URL; redirect_uri = {API_BASE_URL}/oauth/instagram/callback.
        API_BASE_URL => api_base_url: HttpUrl = required, parsed(HttpUrl::FORM, http_url);
        OAUTH_SUCCESS_REDIRECT_URL => success_redirect_url: HttpUrl = required,
            parsed(HttpUrl::FORM, http_url);
        OAUTH_FAILURE_REDIRECT_URL => failure_redirect_url: HttpUrl = required,
            parsed(HttpUrl::FORM, http_url);
        IG_OAUTH_BASE_URL => oauth_base_url: HttpUrl = default "https://api.instagram.com",
            parsed(HttpUrl::FORM, http_url);
        IG_AUTHORIZE_URL => authorize_url: HttpUrl =
            default "https://www.instagram.com/oauth/authorize", parsed(HttpUrl::FORM, http_url);
        /// Lifetime of an OAuth connect ticket and its state.
        OAUTH_STATE_TTL_SECS => state_ttl: Duration = default "600", secs(1, 3600);
    }
}

fn webhook_rules(p: &webhook::Partial, _env: Option<AppEnv>, c: &mut Checker) {
    if let (Some(wait), Some(deadline)) = (p.wait_timeout, p.deadline)
        && wait >= deadline
    {
        c.invalid(
            "REDIS_WAIT_TIMEOUT_MS",
            "milliseconds, less than WEBHOOK_DEADLINE_MS",
        );
    }
}

igsales_config::group! {
    /// Receiving Meta's webhooks.
    pub mod webhook {
        @rules webhook_rules;
        META_WEBHOOK_VERIFY_TOKEN => verify_token: Secret = required,
            secret("the token entered in Meta's webhook settings");
        WEBHOOK_MAX_BODY_BYTES => max_body_bytes: usize = default "1048576",
            amount("bytes", 1024, 64 * 1024 * 1024);
        /// How many unreadable signed payloads `dlq:webhook_invalid` keeps (newest first).
        WEBHOOK_INVALID_DLQ_MAX => invalid_dlq_max: usize = default "10000",
            amount("a count", 1, 1_000_000);
        /// The whole of one delivery's work, under Meta's 5 s: later → 503 and Meta delivers again.
        WEBHOOK_DEADLINE_MS => deadline: Duration = default "4000", millis(1, 4_900);
        /// Deliveries worked on at once; one more is answered 503 at once (Meta delivers it again).
        WEBHOOK_MAX_IN_FLIGHT => max_in_flight: usize = default "2048", amount("a count", 1, 1_000_000);
        /// How long an event's dedupe claim lives (Meta retries for up to 36 h).
        WEBHOOK_DEDUPE_TTL_SECS => dedupe_ttl: Duration = default "172800", secs(1, 2_592_000);
        /// Account → merchant cache: how long a found account is remembered (at most 60).
        ACCOUNT_CACHE_HIT_SECS => account_cache_hit: Duration = default "60", secs(1, 60);
        /// … and an unknown one (at most 5).
        ACCOUNT_CACHE_MISS_SECS => account_cache_miss: Duration = default "5", secs(1, 5);
        /// Replicas that must hold a delivery's writes before it is answered 200 (Redis
        /// `WAIT`); 0: answered once the primary holds them.
        REDIS_MIN_REPLICAS_ACK => min_replicas_ack: u32 = default "0", amount("replicas", 0, 16);
        /// How long a delivery waits for those replicas; fewer by then → 503 (Meta redelivers).
        REDIS_WAIT_TIMEOUT_MS => wait_timeout: Duration = default "500", millis(1, 4_000);
    }
}

igsales_config::group! {
    /// Meta's deauthorize and data-deletion callbacks.
    pub mod callbacks {
        /// How old (or how far ahead of our clock) a `signed_request`'s `issued_at` may be.
        SIGNED_REQUEST_MAX_AGE_SECS => signed_request_max_age: Duration = default "600",
            secs(1, 86_400);
    }
}

igsales_config::group! {
    /// The HTTP server.
    pub mod server {
        PORT => port: u16 = required, parsed("an integer 1–65535", port);
        /// How long in-flight requests may take to finish after SIGTERM.
        SHUTDOWN_TIMEOUT_MS => shutdown_timeout: Duration = default "10000", millis(1, 600_000);
    }
}

igsales_config::group! {
    /// The operators' `/v1` API.
    pub mod admin_api {
        /// Bearer token of the /v1 API (at least 32 characters).
        ADMIN_API_TOKEN => token: Secret = required, parsed("at least 32 characters", long_secret);
        /// Comma-separated origins allowed to call /v1 from a browser (empty: no CORS).
        CORS_ALLOWED_ORIGINS => cors_allowed_origins: Vec<String> = default "",
            parsed("comma-separated origins such as https://dashboard.example.com", origins);
    }
}

igsales_config::groups! {
    /// Every ingress setting, by group.
    pub struct IngressGroups => IngressSettings {
        db: DbArgs => DbSettings,
        redis: RedisArgs => RedisSettings,
        keys: KeyArgs => keys::Settings,
        app: app::Args => app::Settings,
        graph: GraphArgs => GraphSettings,
        dns: dns::Args => dns::Settings,
        oauth: oauth::Args => oauth::Settings,
        webhook: webhook::Args => webhook::Settings,
        callbacks: callbacks::Args => callbacks::Settings,
        server: server::Args => server::Settings,
        admin: admin_api::Args => admin_api::Settings,
    }
}

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
    groups: IngressGroups,
}

impl IngressSettings {
    /// `{API_BASE_URL}/oauth/instagram/callback`: must match Meta's configuration exactly.
    pub fn redirect_uri(&self) -> String {
        format!(
            "{}/oauth/instagram/callback",
            self.oauth.api_base_url.base()
        )
    }
}

impl IngressArgs {
    pub fn check(self) -> Result<(Common, IngressSettings), ConfigError> {
        let mut c = Checker::new();
        let common = self.common.check(&mut c, None);
        let settings = self
            .groups
            .check(&mut c, common.as_ref().map(|co| co.app_env));
        c.finish()?;
        Ok((must(common), must(settings)))
    }
}
