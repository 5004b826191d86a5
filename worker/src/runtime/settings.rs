//! The runtime's own groups (SPEC §3): the pool and the retry policy. Time-like settings are
//! all configurable so tests can shrink them.

use std::time::Duration;

use igsales_config::{AppEnv, Checker};

igsales_config::group! {
    /// The worker pool: how many jobs, how they are fetched, how it stops and recovers.
    pub mod worker_pool {
        /// The worker's /metrics, /healthz and /readyz.
        METRICS_PORT => metrics_port: u16 = default "10001", int(1, u16::MAX);
        /// Jobs run at once, per queue and per process.
        WORKER_CONCURRENCY => concurrency: usize = default "32", int(1, 1024);
        /// Jobs one fetch takes (kept small: fetched jobs wait behind running ones).
        WORKER_PREFETCH => prefetch: usize = default "8", int(1, 256);
        /// How often idle workers look for due jobs.
        WORKER_POLL_INTERVAL_MS => poll_interval: Duration = default "100", millis(10, 60_000);
        /// How long running jobs get to finish after SIGTERM.
        WORKER_SHUTDOWN_TIMEOUT_MS => shutdown_timeout: Duration = default "10000",
            millis(1, 600_000);
        /// A crashed worker's jobs run again elsewhere after this.
        WORKER_ORPHAN_TIMEOUT_SECS => orphan_timeout: Duration = default "30", secs(3, 3600);
        /// Restarts of a dead worker (e.g. after a Redis restart) before the process exits 1.
        WORKER_MAX_RESTARTS => max_restarts: u32 = default "5", int(0, 100);
        /// Restarts older than this no longer count against `WORKER_MAX_RESTARTS`: a worker
        /// that has been healthy this long starts with a fresh budget.
        WORKER_RESTART_WINDOW_SECS => restart_window: Duration = default "600", secs(1, 86_400);
        /// How long a queue's own Redis calls (heartbeat, fetch, ack) are retried in place
        /// through a Redis restart, stall or failover before the worker gives up and restarts.
        WORKER_REDIS_RETRY_SECS => redis_retry: Duration = default "60", secs(1, 3600);
        /// How often finished jobs' data (customer message text among it) is removed from
        /// Redis: every replica sweeps its queues' done and dead sets this often.
        FINISHED_JOB_SWEEP_SECS => finished_sweep: Duration = default "60", secs(1, 3600);
    }
}

impl worker_pool::Settings {
    /// How often a worker heartbeats: a third of the orphan timeout, so three missed
    /// heartbeats make a worker dead.
    pub fn heartbeat(&self) -> Duration {
        (self.orphan_timeout / 3).max(Duration::from_secs(1))
    }

    /// How long a dead worker's fetched jobs wait before another worker runs them: an orphan
    /// timeout to be judged dead and a heartbeat until a reaper looks. A Redis fault just
    /// before defers the judging by up to one more orphan timeout.
    pub fn recovery(&self) -> Duration {
        self.orphan_timeout + self.heartbeat()
    }
}

fn retry_rules(p: &retry::Partial, _: Option<AppEnv>, c: &mut Checker) {
    if let (Some(base), Some(max)) = (p.backoff_base, p.backoff_max)
        && base > max
    {
        c.invalid("JOB_BACKOFF_BASE_MS", "at most JOB_BACKOFF_MAX_MS");
    }
}

igsales_config::group! {
    /// The retry policy: attempts, backoff, waits, and the dead letters it ends in.
    pub mod retry {
        @rules retry_rules;
        JOB_MAX_ATTEMPTS => max_attempts: u32 = default "8", int(1, 100);
        JOB_MAX_ATTEMPTS_INBOUND_EVENT => inbound_event_attempts: Option<u32> = optional,
            int(1, 100);
        JOB_MAX_ATTEMPTS_SEND_MESSAGE => send_message_attempts: Option<u32> = optional,
            int(1, 100);
        JOB_MAX_ATTEMPTS_REFRESH_TOKEN => refresh_token_attempts: Option<u32> = optional,
            int(1, 100);
        JOB_BACKOFF_BASE_MS => backoff_base: Duration = default "1000", millis(1, 3_600_000);
        JOB_BACKOFF_MAX_MS => backoff_max: Duration = default "300000", millis(1, 86_400_000);
        /// Waits up to this long are slept inside the worker; longer ones are re-scheduled.
        JOB_INPROCESS_WAIT_MAX_MS => inprocess_wait_max: Duration = default "2000",
            millis(0, 60_000);
        /// How long a job waits, without using an attempt, while Postgres is unavailable (a
        /// failover, a restart); such waits end after 24 h like any other.
        JOB_UNAVAILABLE_WAIT_MS => unavailable_wait: Duration = default "2000", millis(1, 600_000);
        /// The longest one run of a job may take.
        JOB_TIMEOUT_SECS => job_timeout: Duration = default "120", secs(1, 3600);
        /// Records each `dlq:*` list keeps at most (housekeeping trims the oldest).
        DLQ_MAX_LEN => dlq_max_len: usize = default "10000", amount("a count", 1, 1_000_000);
    }
}

impl retry::Settings {
    /// `JOB_MAX_ATTEMPTS_INBOUND_EVENT`, else `JOB_MAX_ATTEMPTS`.
    pub fn inbound_event(&self) -> u32 {
        self.inbound_event_attempts.unwrap_or(self.max_attempts)
    }
    /// `JOB_MAX_ATTEMPTS_SEND_MESSAGE`, else `JOB_MAX_ATTEMPTS`.
    pub fn send_message(&self) -> u32 {
        self.send_message_attempts.unwrap_or(self.max_attempts)
    }
    /// `JOB_MAX_ATTEMPTS_REFRESH_TOKEN`, else `JOB_MAX_ATTEMPTS`.
    pub fn refresh_token(&self) -> u32 {
        self.refresh_token_attempts.unwrap_or(self.max_attempts)
    }
}
