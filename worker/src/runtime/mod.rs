//! `worker run`'s engine: one apalis worker per queue, the crons, and the worker's HTTP
//! endpoints. It knows jobs only as [`Job`] types and runs their handlers with a context `C`
//! it knows nothing about beyond [`Context`] (the handlers' room builds and registers it).
//!
//! What apalis 1.0 does not do, and where it is handled here (see `../shared/notes/apalis.md`):
//! - a poll strategy that really wakes, and fetches only while there is room — `poll`;
//! - a backlog of ≥ 8,000 due jobs that stalls fetching — `conn`;
//! - retries, waits and dead letters on our terms, never its hidden backend retry — `executor`;
//! - unique worker names per process and restart (a repeated name keeps a crashed twin's jobs
//!   from ever being recovered), and restarts that are bounded, after which the whole process
//!   stops and exits 1 so the orchestrator starts a fresh one;
//! - crons that tick in every replica but make one job per tick (an idempotency key per tick).

mod conn;
pub mod executor;
mod http;
pub mod metrics;
pub mod outcome;
mod poll;
pub mod settings;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use apalis::prelude::{
    BackendExt, BoxDynError, Data, Monitor, ParallelizeExt, TaskId, WorkerBuilder,
    WorkerBuilderExt, WorkerContext,
};
use apalis_cron::{CronScheduler, Tick};
use apalis_redis::{Config, RedisStorage};
use axum::Json;
use axum::http::StatusCode;
use chrono::Utc;
use futures::future::BoxFuture;
use igsales_jobs::RedisConn;
use igsales_jobs::{Job, JobQueue};
use tokio::sync::{Semaphore, watch};

use self::executor::{Policy, RunContext};
use self::outcome::JobError;
use self::settings::{retry, worker_pool};

/// What the runtime needs of the context its handlers run with.
pub trait Context: Send + Sync + 'static {
    /// `/readyz`: whether this process can do its work, and why not.
    fn ready(&self) -> impl Future<Output = (StatusCode, Json<serde_json::Value>)> + Send;
}

type Handler<J, C> =
    Arc<dyn Fn(J, Arc<C>) -> BoxFuture<'static, Result<(), JobError>> + Send + Sync>;

/// One queue's worker state, shared by its runs (and kept across restarts).
struct Queue<J: Job, C> {
    ctx: Arc<C>,
    redis: RedisConn,
    pool: worker_pool::Settings,
    policy: Policy,
    permits: Arc<Semaphore>,
    handler: Handler<J, C>,
    shutdown: watch::Receiver<bool>,
    /// Turns true when this worker was replaced by a restart: its jobs stop, since the dead
    /// worker's in-flight set is recovered (and run again) elsewhere.
    replaced: watch::Receiver<bool>,
}

impl<J: Job, C> Clone for Queue<J, C> {
    fn clone(&self) -> Self {
        Queue {
            ctx: self.ctx.clone(),
            redis: self.redis.clone(),
            pool: self.pool.clone(),
            policy: self.policy.clone(),
            permits: self.permits.clone(),
            handler: self.handler.clone(),
            shutdown: self.shutdown.clone(),
            replaced: self.replaced.clone(),
        }
    }
}

/// The apalis handler of every queue: take a run permit, then run under our policy.
async fn run_job<J: Job, C: Context>(
    job: J,
    id: TaskId,
    worker: WorkerContext,
    queue: Data<Queue<J, C>>,
) -> Result<(), BoxDynError> {
    let _permit = queue.permits.clone().acquire_owned().await?;
    let running = ::metrics::gauge!(self::metrics::RUNNING, "job" => J::NAME);
    running.increment(1.0);
    let ctx = RunContext {
        worker: worker.name().to_owned(),
        redis: queue.redis.clone(),
        shutdown: queue.shutdown.clone(),
    };
    let (handler, app) = (queue.handler.clone(), queue.ctx.clone());
    let call = Arc::new(move |j: J| handler(j, app.clone()));
    let mut replaced = queue.replaced.clone();
    let ended = async move {
        if replaced.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        r = executor::execute(job, id.to_string(), &queue.policy, &ctx, Utc::now(), call) => r,
        () = ended => {
            running.decrement(1.0);
            tracing::warn!(job.name = J::NAME, job.id = %id, "the worker running this job was restarted; the job is stopped and runs again from the dead worker's in-flight set");
            return Err("worker restarted".into());
        }
    };
    running.decrement(1.0);
    result.map(|_| ()).map_err(Into::into)
}

/// Restarts of each worker within the last `window`; a worker past `max` of them gives up.
struct RestartBudget {
    max: usize,
    window: Duration,
    seen: std::collections::HashMap<String, std::collections::VecDeque<std::time::Instant>>,
}

impl RestartBudget {
    fn new(max: usize, window: Duration) -> Self {
        RestartBudget {
            max,
            window,
            seen: Default::default(),
        }
    }

    /// Whether `worker` (its name without the restart count) may restart once more at `now`.
    fn allow(&mut self, worker: &str, now: std::time::Instant) -> (bool, usize) {
        let recent = self.seen.entry(worker.to_owned()).or_default();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            recent.pop_front();
        }
        if recent.len() < self.max {
            recent.push_back(now);
            (true, recent.len())
        } else {
            (false, recent.len())
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".to_owned())
}

/// `{queue}-{host}-{pid}-{boot}-{restarts}`: unique per process and per restart.
fn worker_name(queue: &str, boot: &str, restarts: usize) -> String {
    format!(
        "{queue}-{}-{}-{boot}-{restarts}",
        hostname(),
        std::process::id()
    )
}

fn storage_config<J: Job>(pool: &worker_pool::Settings) -> Config {
    // A worker whose heartbeat is older than heartbeat × missed is dead: its jobs run again
    // elsewhere. Heartbeats come every third of the orphan timeout.
    Config::default()
        .queue(J::NAME)
        .batch_size(pool.prefetch)
        .heartbeat_interval(pool.heartbeat())
        .missed_heartbeats(3)
        // Per-job leases only write a task's status and holder, and the script that takes one
        // scans the whole active list (`LREM`) for every job: with a backlog of N, N² work.
        // Orphans are found by the worker's heartbeat, which this leaves as it is.
        .lock_tasks(false)
}

/// A cron that, in every replica, pushes one job per tick; the tick's idempotency key makes
/// the replicas' pushes one job.
#[derive(Clone)]
struct Cron<J: Job> {
    queue: JobQueue<J>,
    make: fn(i64) -> J,
}

async fn on_tick<J: Job>(tick: Tick, cron: Data<Cron<J>>) -> Result<(), BoxDynError> {
    let ts = i64::try_from(tick.get_timestamp()).unwrap_or(i64::MAX);
    cron.queue
        .push_once((cron.make)(ts), format!("{}:{ts}", J::NAME))
        .await?;
    ::metrics::counter!(self::metrics::CRON_TICKS, "cron" => J::NAME).increment(1);
    Ok(())
}

/// The pool being assembled: queues and crons are registered, then [`Runtime::run`] runs
/// them with the context `C` until a shutdown signal or a worker that keeps dying.
pub struct Runtime<C: Context> {
    ctx: Arc<C>,
    pool: worker_pool::Settings,
    retry: retry::Settings,
    redis: RedisConn,
    boot: String,
    stop: (watch::Sender<bool>, watch::Receiver<bool>),
    faults: conn::Faults,
    monitor: Monitor,
    queues: Vec<&'static str>,
}

impl<C: Context> Runtime<C> {
    pub fn new(
        ctx: Arc<C>,
        redis: RedisConn,
        pool: &worker_pool::Settings,
        retry: &retry::Settings,
    ) -> Self {
        let boot = format!(
            "{:04x}",
            SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
                & 0xffff
        );
        Runtime {
            ctx,
            pool: pool.clone(),
            retry: retry.clone(),
            redis,
            boot,
            stop: watch::channel(false),
            faults: conn::Faults::default(),
            monitor: Monitor::new(),
            queues: Vec::new(),
        }
    }

    /// Registers the worker of job `J`: `handler` runs each job, under the retry policy with
    /// `max_attempts`, with its own run permits and fetch loop.
    pub fn queue<J, F, Fut>(mut self, max_attempts: u32, handler: F) -> Self
    where
        J: Job,
        F: Fn(J, Arc<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let queue = Queue {
            ctx: self.ctx.clone(),
            redis: self.redis.clone(),
            pool: self.pool.clone(),
            policy: Policy {
                max_attempts,
                backoff_base: self.retry.backoff_base,
                backoff_max: self.retry.backoff_max,
                inprocess_wait_max: self.retry.inprocess_wait_max,
                unavailable_wait: self.retry.unavailable_wait,
                timeout: self.retry.job_timeout,
                dlq_max_len: self.retry.dlq_max_len,
            },
            permits: Arc::new(Semaphore::new(self.pool.concurrency)),
            handler: Arc::new(move |job, ctx| Box::pin(handler(job, ctx))),
            shutdown: self.stop.1.clone(),
            replaced: watch::channel(false).1,
        };
        let current: std::sync::Mutex<Option<watch::Sender<bool>>> = std::sync::Mutex::new(None);
        let (redis, boot, faults) = (self.redis.clone(), self.boot.clone(), self.faults.clone());
        self.queues.push(J::NAME);
        self.monitor = self.monitor.register(move |restarts| {
            let pool = &queue.pool;
            let config = storage_config::<J>(pool);
            // A new generation: the previous worker of this queue (if any) died; stop its jobs.
            let (replaced_tx, replaced) = watch::channel(false);
            if let Ok(mut slot) = current.lock()
                && let Some(previous) = slot.replace(replaced_tx)
            {
                previous.send_replace(true);
            }
            let mut queue = queue.clone();
            queue.replaced = replaced;
            let retry = conn::Retry {
                budget: pool.redis_retry,
                orphan_timeout: pool.orphan_timeout,
            };
            let conn = conn::QueueConn::new(redis.clone(), &config, faults.clone(), retry);
            let storage: RedisStorage<J, conn::QueueConn> =
                RedisStorage::new(conn).with_config(config);
            let poll = poll::Gated::new(pool.poll_interval, queue.permits.clone());
            let concurrency = pool.concurrency + pool.prefetch;
            WorkerBuilder::new(worker_name(J::NAME, &boot, restarts))
                .backend(storage.poll_with_strategy(poll))
                .parallelize(tokio::spawn)
                // Above our own permit count so fetched jobs never wait in apalis's buffer.
                .concurrency(concurrency)
                .data(queue)
                .build(run_job::<J, C>)
        });
        self
    }

    /// A cron that pushes `make(tick)` on `schedule`, one job per tick however many replicas.
    pub fn cron<J: Job>(mut self, schedule: cron::Schedule, make: fn(i64) -> J) -> Self {
        let cron = Cron {
            queue: JobQueue::<J>::with_idempotency(
                self.redis.clone(),
                Duration::from_secs(7 * 86_400),
            ),
            make,
        };
        let boot = self.boot.clone();
        self.monitor = self.monitor.register(move |restarts| {
            WorkerBuilder::new(worker_name(&format!("cron-{}", J::NAME), &boot, restarts))
                .backend(CronScheduler::new(schedule.clone()))
                .data(cron.clone())
                .build(on_tick::<J>)
        });
        self
    }
}

/// Job payloads carry customer text: once a job is finished (its outcome is in Postgres, a
/// dead one's also in `dlq:*`), its data has no reason to stay. Every replica sweeps; the
/// script makes concurrent sweeps harmless.
async fn forget_finished(mut redis: RedisConn, queues: Vec<&'static str>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for q in &queues {
            match igsales_jobs::forget::forget_finished(&mut redis, q).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(queue = q, forgotten = n, "finished jobs' data removed"),
                Err(e) => {
                    tracing::warn!(queue = q, error = %igsales_jobs::redis_conn::describe(&e), "removing finished jobs' data failed; next sweep tries again")
                }
            }
        }
    }
}

impl<C: Context> Runtime<C> {
    /// Serves `/metrics`, `/healthz` and `/readyz` on `listener` and runs the pool until
    /// SIGTERM/Ctrl-C (clean exit) or until a worker keeps dying (exit 1).
    pub async fn run(self, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        let Runtime {
            ctx,
            pool,
            redis,
            stop: (stop_tx, _),
            monitor,
            queues,
            ..
        } = self;
        tokio::spawn(http::serve(listener, ctx));
        tokio::spawn(self::metrics::sample_queues(
            redis.clone(),
            queues.clone(),
            Duration::from_secs(5),
        ));
        tokio::spawn(forget_finished(redis, queues.clone(), pool.finished_sweep));

        // A worker that keeps dying (Redis gone for good, a poisoned queue) stops the whole
        // process: a live process with a dead worker would look healthy and do nothing.
        let gave_up = Arc::new(AtomicBool::new(false));
        let restarts_seen = Arc::new(AtomicUsize::new(0));
        let budget = std::sync::Mutex::new(RestartBudget::new(
            pool.max_restarts as usize,
            pool.restart_window,
        ));
        let (fatal_tx, mut fatal_rx) = watch::channel(false);
        let monitor = {
            let gave_up = gave_up.clone();
            let restarts_seen = restarts_seen.clone();
            monitor
            .should_restart(move |ctx, err| {
                restarts_seen.fetch_add(1, Ordering::SeqCst);
                ::metrics::counter!(self::metrics::WORKER_RESTARTS).increment(1);
                // The name without its restart count: one budget per queue worker.
                let name = ctx.name();
                let worker = name.rsplit_once('-').map_or(name, |(w, _)| w);
                let (allowed, recent) = budget
                    .lock()
                    .map(|mut b| b.allow(worker, std::time::Instant::now()))
                    .unwrap_or((false, 0));
                if allowed {
                    tracing::warn!(worker = %name, restarts_in_window = recent, error = %err, "worker died; restarting it");
                    true
                } else {
                    tracing::error!(worker = %name, restarts_in_window = recent, error = %err, "worker keeps dying; stopping the process");
                    gave_up.store(true, Ordering::SeqCst);
                    let _ = fatal_tx.send(true);
                    false
                }
            })
            .shutdown_timeout(pool.shutdown_timeout)
        };
        let signal = async move {
            tokio::select! {
                () = igsales_config::shutdown_signal("running jobs") => {},
                _ = fatal_rx.wait_for(|f| *f) => {},
            }
            // In-process waits end now; their jobs are handed back for later.
            let _ = stop_tx.send(true);
            Ok(())
        };
        tracing::info!(queues = ?queues, concurrency = pool.concurrency, "worker pool running");
        let outcome = monitor.run_with_signal(signal).await;
        if gave_up.load(Ordering::SeqCst) {
            anyhow::bail!(
                "a worker died {} time(s), more than WORKER_MAX_RESTARTS allows within WORKER_RESTART_WINDOW_SECS; exiting for a fresh start",
                restarts_seen.load(Ordering::SeqCst)
            );
        }
        outcome.map_err(|e| anyhow::anyhow!("worker pool failed: {e}"))?;
        tracing::info!("worker pool stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_budget_comes_back_after_a_healthy_window() {
        let mut b = RestartBudget::new(2, Duration::from_secs(60));
        let t0 = std::time::Instant::now();
        assert_eq!(b.allow("inbound_event-h-1-ab", t0), (true, 1));
        assert_eq!(
            b.allow("inbound_event-h-1-ab", t0 + Duration::from_secs(1)),
            (true, 2)
        );
        assert!(
            !b.allow("inbound_event-h-1-ab", t0 + Duration::from_secs(2))
                .0
        );
        // Another queue's worker has its own budget.
        assert!(
            b.allow("send_message-h-1-ab", t0 + Duration::from_secs(2))
                .0
        );
        // A minute after the first restart, one slot is free again; after two, both.
        assert!(
            b.allow("inbound_event-h-1-ab", t0 + Duration::from_millis(60_500))
                .0
        );
        assert!(
            !b.allow("inbound_event-h-1-ab", t0 + Duration::from_millis(60_500))
                .0
        );
        assert!(
            b.allow("inbound_event-h-1-ab", t0 + Duration::from_secs(200))
                .0
        );
    }
}
