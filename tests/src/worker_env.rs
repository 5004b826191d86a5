//! `worker run` as tests and benchmarks start it: its environment and the process.

use crate::cli::key_entry;
use crate::process::{Process, free_port};

pub type Env = Vec<(&'static str, String)>;

/// Settings shrunk for tests (fast backoff and polling, a 3 s orphan timeout, crons far away)
/// against these dependencies and a fresh metrics port. Tests override what they exercise.
pub fn fast(database_url: String, redis_url: String, graph_base: String, llm_base: String) -> Env {
    vec![
        ("DATABASE_URL", database_url),
        ("REDIS_URL", redis_url),
        ("ENCRYPTION_KEY", key_entry(1, 1)),
        ("IG_APP_SECRET", "fake-ig-app-secret".into()),
        ("GRAPH_API_VERSION", "v26.0".into()),
        ("GRAPH_API_BASE_URL", graph_base),
        ("OPENAI_API_KEY", "test-llm-key".into()),
        ("OPENAI_BASE_URL", llm_base),
        ("METRICS_PORT", free_port().to_string()),
        ("WORKER_CONCURRENCY", "4".into()),
        ("JOB_MAX_ATTEMPTS", "3".into()),
        ("JOB_BACKOFF_BASE_MS", "50".into()),
        ("JOB_BACKOFF_MAX_MS", "200".into()),
        ("JOB_INPROCESS_WAIT_MAX_MS", "1000".into()),
        ("WORKER_ORPHAN_TIMEOUT_SECS", "3".into()),
        ("WORKER_POLL_INTERVAL_MS", "50".into()),
        ("WORKER_SHUTDOWN_TIMEOUT_MS", "2000".into()),
        ("WORKER_MAX_RESTARTS", "3".into()),
        ("TOKEN_REFRESH_CRON", "0 0 0 1 1 *".into()),
        ("HOUSEKEEPING_CRON", "0 0 0 1 1 *".into()),
        // Finished jobs stay readable unless a test exercises their removal.
        ("FINISHED_JOB_SWEEP_SECS", "3600".into()),
        ("RUST_LOG", "info,apalis=warn".into()),
    ]
}

/// `env` with `var` set to `value` (replaced if present).
pub fn with(env: &[(&'static str, String)], var: &'static str, value: &str) -> Env {
    let mut e: Env = env.iter().filter(|(k, _)| *k != var).cloned().collect();
    e.push((var, value.to_owned()));
    e
}

/// `env` with every pair of `vars` set.
pub fn with_all(env: &[(&'static str, String)], vars: &[(&'static str, &str)]) -> Env {
    vars.iter()
        .fold(env.to_vec(), |e, (var, value)| with(&e, var, value))
}

/// `worker run` with `env`, up once its `METRICS_PORT` answers.
pub fn start(bin: &str, env: &[(&'static str, String)]) -> Process {
    let port = env
        .iter()
        .find(|(k, _)| *k == "METRICS_PORT")
        .and_then(|(_, v)| v.parse().ok())
        .expect("METRICS_PORT set to a port");
    Process::start(bin, &["run"], env, port)
}
