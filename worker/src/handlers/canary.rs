//! The canary: records each run in Redis and fails as its payload asks (see `CanaryV1`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use igsales_jobs::{CanaryFailure, CanaryV1};

use crate::handlers::Shared;
use crate::runtime::metrics::PICKUP_SECONDS;
use crate::runtime::outcome::JobError;

/// Run records expire: a canary is a probe, not data.
const KEEP_SECS: i64 = 86_400;

pub async fn run(job: CanaryV1, shared: &Shared) -> Result<(), JobError> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    if job.pushed_ms > 0 && job.delivery.attempt == 0 {
        metrics::histogram!(PICKUP_SECONDS, "job" => "canary")
            .record((now_ms - job.pushed_ms).max(0) as f64 / 1000.0);
    }
    let runs_key = format!("canary:{}:runs", job.id);
    let started_key = format!("canary:{}:started_ms", job.id);
    let mut redis = shared.redis.clone();
    let (runs,): (u32,) = redis::pipe()
        .atomic()
        .incr(&runs_key, 1)
        .expire(&runs_key, KEEP_SECS)
        .ignore()
        .rpush(&started_key, now_ms)
        .ignore()
        .expire(&started_key, KEEP_SECS)
        .ignore()
        .query_async(&mut redis)
        .await
        .map_err(JobError::redis)?;
    if job.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
    }
    if runs <= job.fail_first {
        let why = anyhow::anyhow!("canary {} asked to fail run {runs}", job.id);
        return Err(match job.fail_as {
            CanaryFailure::Retry => JobError::Retry(why),
            CanaryFailure::Permanent => JobError::permanent(why),
            CanaryFailure::Wait => {
                JobError::Wait(Duration::from_secs(job.wait_secs), "canary asked to wait")
            }
        });
    }
    Ok(())
}
