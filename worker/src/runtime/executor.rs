//! One run of one job, with our retry policy around the handler.
//!
//! apalis only sees success: retries, waits and dead letters are decided here, so apalis's own
//! backend retry (which re-runs a `Failed` task up to 25 times whatever we configure) never
//! adds attempts. Short waits are slept in process; longer ones become a new push with a run-at
//! and the attempt count in the payload, so no worker slot is held through them. A job that is
//! out of attempts, or failed for good, becomes one record in `dlq:{job}`.
//!
//! Only when Redis itself fails (the re-schedule or the dead-letter push) does the run end in an
//! error, leaving the task to apalis to run again: nothing is lost, at the cost of one run more.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use igsales_jobs::RedisConn;
use igsales_jobs::{DeadLetter, DeadReason, Job, JobQueue, push_dead_letter};
use tokio::sync::watch;

use super::metrics as m;
use super::outcome::{JobError, backoff, unit_random};

/// The policy one queue runs with.
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub inprocess_wait_max: Duration,
    pub unavailable_wait: Duration,
    pub timeout: Duration,
    pub dlq_max_len: usize,
}

/// Where a run happens: names for the record, Redis for re-scheduling and dead letters, and
/// the shutdown signal that cuts in-process waits short.
#[derive(Clone)]
pub struct RunContext {
    pub worker: String,
    pub redis: RedisConn,
    pub shutdown: watch::Receiver<bool>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InfraError(String);

/// How the run ended, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Done,
    Rescheduled,
    Dead(DeadReason),
}

pub async fn execute<J, F, Fut>(
    mut job: J,
    task_id: String,
    policy: &Policy,
    ctx: &RunContext,
    first_seen: DateTime<Utc>,
    handler: Arc<F>,
) -> Result<Ended, InfraError>
where
    J: Job,
    F: Fn(J) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send,
{
    let first_enqueued_at = job.delivery().first_enqueued_at.unwrap_or(first_seen);
    // Bounds how long one run may keep its slot through short waits.
    let mut inprocess_waits = 0u32;
    loop {
        let started = Instant::now();
        let result = match tokio::time::timeout(policy.timeout, handler(job.clone())).await {
            Ok(r) => r,
            Err(_) => Err(JobError::Retry(anyhow::anyhow!(
                "run exceeded JOB_TIMEOUT_SECS ({:?})",
                policy.timeout
            ))),
        };
        metrics::histogram!(m::JOB_SECONDS, "job" => J::NAME)
            .record(started.elapsed().as_secs_f64());
        let (delay, uses_attempt, error) = match result {
            Ok(()) => {
                metrics::counter!(m::JOBS, "job" => J::NAME, "outcome" => "done").increment(1);
                return Ok(Ended::Done);
            }
            Err(JobError::Dead(reason, e)) => {
                let attempts = job.delivery().attempt + 1;
                return dead_letter(
                    &job,
                    &task_id,
                    ctx,
                    policy,
                    reason,
                    &e,
                    attempts,
                    first_enqueued_at,
                )
                .await;
            }
            Err(JobError::Wait(d, why)) => {
                metrics::counter!(m::JOBS, "job" => J::NAME, "outcome" => "waited").increment(1);
                tracing::debug!(job.name = J::NAME, job.id = %task_id, wait_ms = d.as_millis() as u64, why, "job waits");
                (d, false, None)
            }
            Err(JobError::Unavailable(e)) => {
                // Bounded like every wait: past the day the work is stale anyway.
                if Utc::now() - first_enqueued_at > chrono::Duration::hours(24) {
                    let attempts = job.delivery().attempt + 1;
                    return dead_letter(
                        &job,
                        &task_id,
                        ctx,
                        policy,
                        DeadReason::Exhausted,
                        &e,
                        attempts,
                        first_enqueued_at,
                    )
                    .await;
                }
                metrics::counter!(m::JOBS, "job" => J::NAME, "outcome" => "unavailable")
                    .increment(1);
                tracing::warn!(job.name = J::NAME, job.id = %task_id, error = %e, "a dependency is unavailable; the job waits");
                (policy.unavailable_wait, false, None)
            }
            Err(JobError::Retry(e)) => (Duration::ZERO, true, Some(e)),
            Err(JobError::RetryAfter(d, e)) => (d, true, Some(e)),
        };
        if uses_attempt {
            let used = job.delivery().attempt + 1;
            job.delivery_mut().attempt = used;
            let e = error.unwrap_or_else(|| anyhow::anyhow!("retry"));
            if used >= policy.max_attempts {
                return dead_letter(
                    &job,
                    &task_id,
                    ctx,
                    policy,
                    DeadReason::Exhausted,
                    &e,
                    used,
                    first_enqueued_at,
                )
                .await;
            }
            metrics::counter!(m::JOBS, "job" => J::NAME, "outcome" => "retried").increment(1);
            tracing::warn!(job.name = J::NAME, job.id = %task_id, job.attempt = used, error = %e, "job failed; will retry");
        }
        let wait = if uses_attempt {
            backoff(
                policy.backoff_base,
                policy.backoff_max,
                job.delivery().attempt,
                unit_random(),
            )
            .max(delay)
        } else {
            delay
        };
        job.delivery_mut().first_enqueued_at = Some(first_enqueued_at);

        let mut shutdown = ctx.shutdown.clone();
        if wait <= policy.inprocess_wait_max && inprocess_waits < 3 && !*shutdown.borrow() {
            inprocess_waits += 1;
            tokio::select! {
                () = tokio::time::sleep(wait) => continue,
                // Shutting down: hand the job back for later instead of holding the exit.
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
        }
        let run_at = SystemTime::now() + wait;
        JobQueue::<J>::new(ctx.redis.clone())
            .push_at(job, run_at)
            .await
            .map_err(|e| InfraError(e.to_string()))?;
        metrics::counter!(m::JOBS, "job" => J::NAME, "outcome" => "rescheduled").increment(1);
        return Ok(Ended::Rescheduled);
    }
}

#[expect(clippy::too_many_arguments, reason = "one record, many fields")]
async fn dead_letter<J: Job>(
    job: &J,
    task_id: &str,
    ctx: &RunContext,
    policy: &Policy,
    reason: DeadReason,
    error: &anyhow::Error,
    attempts: u32,
    first_enqueued_at: DateTime<Utc>,
) -> Result<Ended, InfraError> {
    let record = DeadLetter {
        id: task_id.to_owned(),
        job: J::NAME.to_owned(),
        payload: serde_json::to_value(job).map_err(|e| InfraError(e.to_string()))?,
        error: format!("{error:#}"),
        reason,
        attempts,
        first_enqueued_at,
        failed_at: Utc::now(),
        worker: ctx.worker.clone(),
    };
    let text = serde_json::to_string(&record).map_err(|e| InfraError(e.to_string()))?;
    let mut redis = ctx.redis.clone();
    push_dead_letter(&mut redis, J::NAME, &text, policy.dlq_max_len)
        .await
        .map_err(|e| InfraError(format!("dead-letter push failed: {e}")))?;
    metrics::counter!(m::DLQ_PUSHED, "queue" => J::NAME, "reason" => reason.as_str()).increment(1);
    metrics::counter!(m::JOBS, "job" => J::NAME, "outcome" => "dead").increment(1);
    tracing::error!(
        job.name = J::NAME,
        job.id = %task_id,
        job.attempts = attempts,
        reason = reason.as_str(),
        error = %format!("{error:#}"),
        "job moved to its dead-letter list"
    );
    Ok(Ended::Dead(reason))
}
