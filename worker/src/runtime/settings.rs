//! `worker run` configuration (SPEC §3): every knob of the pool, validated before anything
//! connects. Time-like settings are all configurable so tests can shrink them.

use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use igsales_config::Unit;
use igsales_config::{
    Checker, DbArgs, DbSettings, GraphArgs, GraphSettings, HttpUrl, KeyArgs, KeyRing, RedisArgs,
    RedisSettings, Secret,
};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    keys: KeyArgs,
    #[arg(long, env = "IG_APP_SECRET", hide_env_values = true)]
    ig_app_secret: Option<String>,
    #[command(flatten)]
    graph: GraphArgs,
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    openai_api_key: Option<String>,
    #[arg(
        long,
        env = "OPENAI_BASE_URL",
        default_value = "https://api.openai.com/v1",
        hide_env_values = true
    )]
    openai_base_url: String,
    #[arg(
        long,
        env = "OPENAI_MODEL",
        default_value = "gpt-4o-mini",
        hide_env_values = true
    )]
    openai_model: String,
    #[arg(
        long,
        env = "OPENAI_TIMEOUT_MS",
        default_value = "30000",
        hide_env_values = true
    )]
    openai_timeout_ms: String,
    /// Model calls in flight at once (each holds a blocking thread while it waits).
    #[arg(
        long,
        env = "OPENAI_MAX_CONCURRENCY",
        default_value = "256",
        hide_env_values = true
    )]
    openai_max_concurrency: String,
    #[arg(
        long,
        env = "OPENAI_MAX_TOKENS",
        default_value = "400",
        hide_env_values = true
    )]
    openai_max_tokens: String,
    /// How long a throttled merchant waits when Meta gives no regain time.
    #[arg(
        long,
        env = "GRAPH_THROTTLE_WAIT_SECS",
        default_value = "60",
        hide_env_values = true
    )]
    graph_throttle_wait_secs: String,
    /// The longest pause a regain time from Meta can impose before calls are tried again.
    #[arg(
        long,
        env = "GRAPH_MAX_PAUSE_SECS",
        default_value = "3600",
        hide_env_values = true
    )]
    graph_max_pause_secs: String,
    /// The worker's /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "METRICS_PORT",
        default_value = "10001",
        hide_env_values = true
    )]
    metrics_port: String,
    /// Jobs run at once, per queue and per process.
    #[arg(
        long,
        env = "WORKER_CONCURRENCY",
        default_value = "32",
        hide_env_values = true
    )]
    worker_concurrency: String,
    #[arg(
        long,
        env = "JOB_MAX_ATTEMPTS",
        default_value = "8",
        hide_env_values = true
    )]
    job_max_attempts: String,
    #[arg(long, env = "JOB_MAX_ATTEMPTS_INBOUND_EVENT", hide_env_values = true)]
    job_max_attempts_inbound_event: Option<String>,
    #[arg(long, env = "JOB_MAX_ATTEMPTS_SEND_MESSAGE", hide_env_values = true)]
    job_max_attempts_send_message: Option<String>,
    #[arg(long, env = "JOB_MAX_ATTEMPTS_REFRESH_TOKEN", hide_env_values = true)]
    job_max_attempts_refresh_token: Option<String>,
    #[arg(
        long,
        env = "JOB_BACKOFF_BASE_MS",
        default_value = "1000",
        hide_env_values = true
    )]
    job_backoff_base_ms: String,
    #[arg(
        long,
        env = "JOB_BACKOFF_MAX_MS",
        default_value = "300000",
        hide_env_values = true
    )]
    job_backoff_max_ms: String,
    /// Waits up to this long are slept inside the worker; longer ones are re-scheduled.
    #[arg(
        long,
        env = "JOB_INPROCESS_WAIT_MAX_MS",
        default_value = "2000",
        hide_env_values = true
    )]
    job_inprocess_wait_max_ms: String,
    /// How long a job waits, without using an attempt, while Postgres is unavailable (a
    /// failover, a restart); such waits end after 24 h like any other.
    #[arg(
        long,
        env = "JOB_UNAVAILABLE_WAIT_MS",
        default_value = "2000",
        hide_env_values = true
    )]
    job_unavailable_wait_ms: String,
    /// The longest one run of a job may take.
    #[arg(
        long,
        env = "JOB_TIMEOUT_SECS",
        default_value = "120",
        hide_env_values = true
    )]
    job_timeout_secs: String,
    /// A crashed worker's jobs run again elsewhere after this.
    #[arg(
        long,
        env = "WORKER_ORPHAN_TIMEOUT_SECS",
        default_value = "30",
        hide_env_values = true
    )]
    worker_orphan_timeout_secs: String,
    /// Jobs one fetch takes (kept small: fetched jobs wait behind running ones).
    #[arg(
        long,
        env = "WORKER_PREFETCH",
        default_value = "8",
        hide_env_values = true
    )]
    worker_prefetch: String,
    /// How often idle workers look for due jobs.
    #[arg(
        long,
        env = "WORKER_POLL_INTERVAL_MS",
        default_value = "100",
        hide_env_values = true
    )]
    worker_poll_interval_ms: String,
    /// How long running jobs get to finish after SIGTERM.
    #[arg(
        long,
        env = "WORKER_SHUTDOWN_TIMEOUT_MS",
        default_value = "10000",
        hide_env_values = true
    )]
    worker_shutdown_timeout_ms: String,
    /// Restarts of a dead worker (e.g. after a Redis restart) before the process exits 1.
    #[arg(
        long,
        env = "WORKER_MAX_RESTARTS",
        default_value = "5",
        hide_env_values = true
    )]
    worker_max_restarts: String,
    /// Restarts older than this no longer count against `WORKER_MAX_RESTARTS`: a worker that
    /// has been healthy this long starts with a fresh budget.
    #[arg(
        long,
        env = "WORKER_RESTART_WINDOW_SECS",
        default_value = "600",
        hide_env_values = true
    )]
    worker_restart_window_secs: String,
    /// How long a queue's own Redis calls (heartbeat, fetch, ack) are retried in place through a
    /// Redis restart, stall or failover before the worker gives up and restarts.
    #[arg(
        long,
        env = "WORKER_REDIS_RETRY_SECS",
        default_value = "60",
        hide_env_values = true
    )]
    worker_redis_retry_secs: String,
    /// Six-field cron (with seconds), UTC.
    #[arg(
        long,
        env = "TOKEN_REFRESH_CRON",
        default_value = "0 0 * * * *",
        hide_env_values = true
    )]
    token_refresh_cron: String,
    #[arg(
        long,
        env = "TOKEN_REFRESH_WINDOW_DAYS",
        default_value = "10",
        hide_env_values = true
    )]
    token_refresh_window_days: String,
    #[arg(
        long,
        env = "HOUSEKEEPING_CRON",
        default_value = "0 30 3 * * *",
        hide_env_values = true
    )]
    housekeeping_cron: String,
    #[arg(
        long,
        env = "GRAPH_SEND_RATE_PER_SEC",
        default_value = "50",
        hide_env_values = true
    )]
    graph_send_rate_per_sec: String,
    #[arg(
        long,
        env = "HUMAN_TAKEOVER_MINUTES",
        default_value = "720",
        hide_env_values = true
    )]
    human_takeover_minutes: String,
    #[arg(
        long,
        env = "ECHO_CONFIRM_SECS",
        default_value = "60",
        hide_env_values = true
    )]
    echo_confirm_secs: String,
    #[arg(
        long,
        env = "RETENTION_DAYS",
        default_value = "30",
        hide_env_values = true
    )]
    retention_days: String,
    /// Records each `dlq:*` list keeps at most (housekeeping trims the oldest).
    #[arg(
        long,
        env = "DLQ_MAX_LEN",
        default_value = "10000",
        hide_env_values = true
    )]
    dlq_max_len: String,
    #[arg(
        long,
        env = "META_HTTP_MAX_CONCURRENCY",
        default_value = "64",
        hide_env_values = true
    )]
    meta_http_max_concurrency: String,
}

#[derive(Debug, Clone)]
pub struct RunSettings {
    pub db: DbSettings,
    pub redis: RedisSettings,
    pub keys: KeyRing,
    pub ig_app_secret: Secret,
    pub graph: GraphSettings,
    pub openai_api_key: Secret,
    pub openai_base_url: HttpUrl,
    pub openai_model: String,
    pub openai_timeout: Duration,
    pub openai_max_concurrency: usize,
    pub openai_max_tokens: u32,
    pub graph_throttle_wait: Duration,
    pub graph_max_pause: Duration,
    pub metrics_port: u16,
    pub concurrency: usize,
    pub prefetch: usize,
    pub max_attempts: u32,
    pub max_attempts_inbound_event: u32,
    pub max_attempts_send_message: u32,
    pub max_attempts_refresh_token: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub inprocess_wait_max: Duration,
    pub unavailable_wait: Duration,
    pub job_timeout: Duration,
    pub orphan_timeout: Duration,
    pub poll_interval: Duration,
    pub shutdown_timeout: Duration,
    pub max_restarts: u32,
    pub restart_window: Duration,
    pub redis_retry: Duration,
    pub token_refresh_cron: String,
    pub token_refresh_window: Duration,
    pub housekeeping_cron: String,
    pub graph_send_rate_per_sec: u32,
    pub human_takeover: Duration,
    pub echo_confirm: Duration,
    pub retention: Duration,
    pub dlq_max_len: usize,
    pub meta_http_max_concurrency: usize,
}

fn int<T: FromStr + PartialOrd + Copy>(min: T, max: T) -> impl FnOnce(&str) -> Result<T, String> {
    move |s| {
        s.parse::<T>()
            .ok()
            .filter(|v| *v >= min && *v <= max)
            .ok_or_else(String::new)
    }
}

fn cron(s: &str) -> Result<String, String> {
    cron::Schedule::from_str(s)
        .map(|_| s.to_owned())
        .map_err(|_| String::new())
}

const CRON_FORM: &str = "a cron expression with seconds, e.g. 0 0 * * * * (hourly)";

impl RunArgs {
    pub fn check(
        self,
        c: &mut Checker,
        env: Option<igsales_config::AppEnv>,
    ) -> Option<RunSettings> {
        let db = self.db.check(c);
        let redis = self.redis.check(c, env);
        let keys = self.keys.check(c);
        let ig_app_secret = c.required(
            "IG_APP_SECRET",
            self.ig_app_secret.as_deref(),
            "the app secret",
            |s| Ok(Secret::new(s)),
        );
        let graph = self.graph.check(c);
        let openai_api_key = c.required(
            "OPENAI_API_KEY",
            self.openai_api_key.as_deref(),
            "the LLM API key",
            |s| Ok(Secret::new(s)),
        );
        let openai_base_url = c.value(
            "OPENAI_BASE_URL",
            &self.openai_base_url,
            HttpUrl::FORM,
            HttpUrl::parse,
        );
        let openai_model = c.value("OPENAI_MODEL", &self.openai_model, "a model name", |s| {
            Ok(s.to_owned())
        });
        let openai_timeout = c.millis("OPENAI_TIMEOUT_MS", &self.openai_timeout_ms, 1, 600_000);
        let openai_concurrency = c.value(
            "OPENAI_MAX_CONCURRENCY",
            &self.openai_max_concurrency,
            "a count, 1–4096",
            int(1usize, 4096),
        );
        let openai_tokens = c.value(
            "OPENAI_MAX_TOKENS",
            &self.openai_max_tokens,
            "tokens, 16–4096",
            int(16u32, 4096),
        );
        let throttle_wait = c.duration(
            "GRAPH_THROTTLE_WAIT_SECS",
            &self.graph_throttle_wait_secs,
            Unit::Secs,
            1,
            3600,
        );
        let max_pause = c.duration(
            "GRAPH_MAX_PAUSE_SECS",
            &self.graph_max_pause_secs,
            Unit::Secs,
            1,
            86400,
        );
        let metrics_port = c.value(
            "METRICS_PORT",
            &self.metrics_port,
            "an integer 1–65535",
            int(1u16, u16::MAX),
        );
        let concurrency = c.value(
            "WORKER_CONCURRENCY",
            &self.worker_concurrency,
            "an integer 1–1024",
            int(1usize, 1024),
        );
        let prefetch = c.value(
            "WORKER_PREFETCH",
            &self.worker_prefetch,
            "an integer 1–256",
            int(1usize, 256),
        );
        let max_attempts = c.value(
            "JOB_MAX_ATTEMPTS",
            &self.job_max_attempts,
            "an integer 1–100",
            int(1u32, 100),
        );
        let per_job = |c: &mut Checker, var: &'static str, raw: Option<&str>| {
            c.optional(var, raw, "an integer 1–100", int(1u32, 100))
        };
        let inbound = per_job(
            c,
            "JOB_MAX_ATTEMPTS_INBOUND_EVENT",
            self.job_max_attempts_inbound_event.as_deref(),
        );
        let send = per_job(
            c,
            "JOB_MAX_ATTEMPTS_SEND_MESSAGE",
            self.job_max_attempts_send_message.as_deref(),
        );
        let refresh = per_job(
            c,
            "JOB_MAX_ATTEMPTS_REFRESH_TOKEN",
            self.job_max_attempts_refresh_token.as_deref(),
        );
        let backoff_base = c.millis(
            "JOB_BACKOFF_BASE_MS",
            &self.job_backoff_base_ms,
            1,
            3_600_000,
        );
        let backoff_max = c.millis(
            "JOB_BACKOFF_MAX_MS",
            &self.job_backoff_max_ms,
            1,
            86_400_000,
        );
        let inprocess = c.millis(
            "JOB_INPROCESS_WAIT_MAX_MS",
            &self.job_inprocess_wait_max_ms,
            0,
            60_000,
        );
        let unavailable = c.millis(
            "JOB_UNAVAILABLE_WAIT_MS",
            &self.job_unavailable_wait_ms,
            1,
            600_000,
        );
        let job_timeout = c.duration(
            "JOB_TIMEOUT_SECS",
            &self.job_timeout_secs,
            Unit::Secs,
            1,
            3600,
        );
        let orphan = c.duration(
            "WORKER_ORPHAN_TIMEOUT_SECS",
            &self.worker_orphan_timeout_secs,
            Unit::Secs,
            3,
            3600,
        );
        let poll = c.millis(
            "WORKER_POLL_INTERVAL_MS",
            &self.worker_poll_interval_ms,
            10,
            60_000,
        );
        let shutdown = c.millis(
            "WORKER_SHUTDOWN_TIMEOUT_MS",
            &self.worker_shutdown_timeout_ms,
            1,
            600_000,
        );
        let restarts = c.value(
            "WORKER_MAX_RESTARTS",
            &self.worker_max_restarts,
            "an integer 0–100",
            int(0u32, 100),
        );
        let restart_window = c.duration(
            "WORKER_RESTART_WINDOW_SECS",
            &self.worker_restart_window_secs,
            Unit::Secs,
            1,
            86_400,
        );
        let redis_retry = c.duration(
            "WORKER_REDIS_RETRY_SECS",
            &self.worker_redis_retry_secs,
            Unit::Secs,
            1,
            3600,
        );
        let token_cron = c.value(
            "TOKEN_REFRESH_CRON",
            &self.token_refresh_cron,
            CRON_FORM,
            cron,
        );
        let window = c.duration(
            "TOKEN_REFRESH_WINDOW_DAYS",
            &self.token_refresh_window_days,
            Unit::Days,
            1,
            59,
        );
        let housekeeping_cron = c.value(
            "HOUSEKEEPING_CRON",
            &self.housekeeping_cron,
            CRON_FORM,
            cron,
        );
        let rate = c.value(
            "GRAPH_SEND_RATE_PER_SEC",
            &self.graph_send_rate_per_sec,
            "an integer 1–100",
            int(1u32, 100),
        );
        let takeover = c.duration(
            "HUMAN_TAKEOVER_MINUTES",
            &self.human_takeover_minutes,
            Unit::Minutes,
            1,
            43200,
        );
        let echo = c.duration(
            "ECHO_CONFIRM_SECS",
            &self.echo_confirm_secs,
            Unit::Secs,
            1,
            3600,
        );
        let retention = c.duration("RETENTION_DAYS", &self.retention_days, Unit::Days, 1, 3650);
        let dlq_max = c.value(
            "DLQ_MAX_LEN",
            &self.dlq_max_len,
            "a count, 1–1000000",
            int(1usize, 1_000_000),
        );
        let meta_concurrency = c.value(
            "META_HTTP_MAX_CONCURRENCY",
            &self.meta_http_max_concurrency,
            "a count, 1–1024",
            int(1usize, 1024),
        );
        if let (Some(base), Some(max)) = (backoff_base, backoff_max)
            && base > max
        {
            c.invalid("JOB_BACKOFF_BASE_MS", "at most JOB_BACKOFF_MAX_MS");
        }
        let max_attempts = max_attempts?;
        Some(RunSettings {
            db: db?,
            redis: redis?,
            keys: keys?,
            ig_app_secret: ig_app_secret?,
            graph: graph?,
            openai_api_key: openai_api_key?,
            openai_base_url: openai_base_url?,
            openai_model: openai_model?,
            openai_timeout: openai_timeout?,
            openai_max_concurrency: openai_concurrency?,
            openai_max_tokens: openai_tokens?,
            graph_throttle_wait: throttle_wait?,
            graph_max_pause: max_pause?,
            metrics_port: metrics_port?,
            concurrency: concurrency?,
            prefetch: prefetch?,
            max_attempts,
            max_attempts_inbound_event: inbound?.unwrap_or(max_attempts),
            max_attempts_send_message: send?.unwrap_or(max_attempts),
            max_attempts_refresh_token: refresh?.unwrap_or(max_attempts),
            backoff_base: backoff_base?,
            backoff_max: backoff_max?,
            inprocess_wait_max: inprocess?,
            unavailable_wait: unavailable?,
            job_timeout: job_timeout?,
            orphan_timeout: orphan?,
            poll_interval: poll?,
            shutdown_timeout: shutdown?,
            max_restarts: restarts?,
            restart_window: restart_window?,
            redis_retry: redis_retry?,
            token_refresh_cron: token_cron?,
            token_refresh_window: window?,
            housekeeping_cron: housekeeping_cron?,
            graph_send_rate_per_sec: rate?,
            human_takeover: takeover?,
            echo_confirm: echo?,
            retention: retention?,
            dlq_max_len: dlq_max?,
            meta_http_max_concurrency: meta_concurrency?,
        })
    }
}
