//! Worker metric names (`igsales_` prefix) and the queue gauges sampled from Redis.

use std::time::Duration;

use apalis_redis::Config;
use igsales_jobs::RedisConn;

pub const JOBS: &str = "igsales_jobs_total";
pub const JOB_SECONDS: &str = "igsales_job_duration_seconds";
pub const DLQ_PUSHED: &str = "igsales_dlq_pushed_total";
pub const DLQ_DEPTH: &str = "igsales_dlq_depth";
pub const QUEUE_SCHEDULED: &str = "igsales_queue_scheduled";
pub const QUEUE_ACTIVE: &str = "igsales_queue_active";
pub const QUEUE_INFLIGHT: &str = "igsales_queue_inflight";
pub const RUNNING: &str = "igsales_jobs_running";
pub const PICKUP_SECONDS: &str = "igsales_job_pickup_seconds";
pub const CRON_TICKS: &str = "igsales_cron_ticks_total";
pub const WORKER_RESTARTS: &str = "igsales_worker_restarts_total";

/// Samples queue depths every `every` until the process ends. Reads keys directly: apalis's
/// own introspection is unreliable in 1.0.
pub async fn sample_queues(mut redis: RedisConn, queues: Vec<&'static str>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        sample_invalid_webhooks(&mut redis).await;
        for q in &queues {
            let cfg = Config::default().queue(q);
            let scheduled: redis::RedisResult<u64> = redis::cmd("ZCARD")
                .arg(cfg.scheduled_jobs_set())
                .query_async(&mut redis)
                .await;
            let active: redis::RedisResult<u64> = redis::cmd("LLEN")
                .arg(cfg.active_jobs_list())
                .query_async(&mut redis)
                .await;
            let dlq: redis::RedisResult<u64> = redis::cmd("LLEN")
                .arg(igsales_jobs::dlq_key(q))
                .query_async(&mut redis)
                .await;
            let inflight = inflight(&mut redis, &cfg).await;
            let label = (*q).to_owned();
            if let Ok(n) = scheduled {
                metrics::gauge!(QUEUE_SCHEDULED, "queue" => label.clone()).set(n as f64);
            }
            if let Ok(n) = active {
                metrics::gauge!(QUEUE_ACTIVE, "queue" => label.clone()).set(n as f64);
            }
            if let Ok(n) = dlq {
                metrics::gauge!(DLQ_DEPTH, "queue" => label.clone()).set(n as f64);
            }
            if let Ok(n) = inflight {
                metrics::gauge!(QUEUE_INFLIGHT, "queue" => label).set(n as f64);
            }
        }
    }
}

/// Depth of the ingress's list of unreadable webhooks (`dlq:webhook_invalid`).
pub async fn sample_invalid_webhooks(redis: &mut RedisConn) {
    let n: redis::RedisResult<u64> = redis::cmd("LLEN")
        .arg(igsales_jobs::dlq_key(igsales_jobs::WEBHOOK_INVALID))
        .query_async(redis)
        .await;
    if let Ok(n) = n {
        metrics::gauge!(DLQ_DEPTH, "queue" => igsales_jobs::WEBHOOK_INVALID).set(n as f64);
    }
}

/// Jobs held by any worker: the sum over `{q}:inflight:*` sets of live workers.
async fn inflight(redis: &mut RedisConn, cfg: &Config) -> redis::RedisResult<u64> {
    let workers: Vec<String> = redis::cmd("ZRANGE")
        .arg(cfg.workers_set())
        .arg(0)
        .arg(-1)
        .query_async(redis)
        .await?;
    let mut pipe = redis::pipe();
    for w in &workers {
        pipe.scard(format!("{}:{w}", cfg.inflight_jobs_set()));
    }
    let counts: Vec<u64> = pipe.query_async(redis).await?;
    Ok(counts.iter().sum())
}
