//! `worker run`: one apalis worker per queue, the crons, and the worker's HTTP endpoints.
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
use chrono::Utc;
use futures::future::BoxFuture;
use igsales_jobs::{HousekeepingV1, InboundSignalV1, Job, JobQueue, TokenRefreshSweepV1};
use igsales_meta::MetaClient;
use igsales_schema::{Db, Vault};
use redis::aio::ConnectionManager;
use tokio::sync::{Semaphore, watch};

use self::executor::{Policy, RunContext};
use self::outcome::JobError;
pub use self::settings::{RunArgs, RunSettings};

/// Every queue a worker process serves.
pub const QUEUES: &[&str] = igsales_jobs::QUEUES;

/// What every handler may use; one per process.
pub struct Shared {
    pub db: Db,
    pub redis: ConnectionManager,
    pub vault: Vault,
    pub meta: MetaClient,
    pub llm: crate::sales::llm::LlmClient,
    pub gate: crate::sales::graph::GraphGate,
    pub settings: RunSettings,
}

type Handler<J> =
    Arc<dyn Fn(J, Arc<Shared>) -> BoxFuture<'static, Result<(), JobError>> + Send + Sync>;

/// One queue's worker state, shared by its runs (and kept across restarts).
struct Queue<J: Job> {
    shared: Arc<Shared>,
    policy: Policy,
    permits: Arc<Semaphore>,
    handler: Handler<J>,
    shutdown: watch::Receiver<bool>,
    /// Turns true when this worker was replaced by a restart: its jobs stop, since the dead
    /// worker's in-flight set is recovered (and run again) elsewhere.
    replaced: watch::Receiver<bool>,
}

impl<J: Job> Clone for Queue<J> {
    fn clone(&self) -> Self {
        Queue {
            shared: self.shared.clone(),
            policy: self.policy.clone(),
            permits: self.permits.clone(),
            handler: self.handler.clone(),
            shutdown: self.shutdown.clone(),
            replaced: self.replaced.clone(),
        }
    }
}

/// The apalis handler of every queue: take a run permit, then run under our policy.
async fn run_job<J: Job>(
    job: J,
    id: TaskId,
    worker: WorkerContext,
    queue: Data<Queue<J>>,
) -> Result<(), BoxDynError> {
    let _permit = queue.permits.clone().acquire_owned().await?;
    let running = ::metrics::gauge!(self::metrics::RUNNING, "job" => J::NAME);
    running.increment(1.0);
    let ctx = RunContext {
        worker: worker.name().to_owned(),
        redis: queue.shared.redis.clone(),
        shutdown: queue.shutdown.clone(),
    };
    let (handler, shared) = (queue.handler.clone(), queue.shared.clone());
    let call = Arc::new(move |j: J| handler(j, shared.clone()));
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

fn storage_config<J: Job>(settings: &RunSettings) -> Config {
    // A worker whose heartbeat is older than heartbeat × missed is dead: its jobs run again
    // elsewhere. Heartbeats come every third of the orphan timeout.
    let heartbeat = (settings.pool.orphan_timeout / 3).max(Duration::from_secs(1));
    Config::default()
        .queue(J::NAME)
        .batch_size(settings.pool.prefetch)
        .heartbeat_interval(heartbeat)
        .missed_heartbeats(3)
        // Per-job leases only write a task's status and holder, and the script that takes one
        // scans the whole active list (`LREM`) for every job: with a backlog of N, N² work.
        // Orphans are found by the worker's heartbeat, which this leaves as it is.
        .lock_tasks(false)
}

/// Registers the worker of one queue.
fn register<J: Job>(
    monitor: Monitor,
    queue: Queue<J>,
    redis: ConnectionManager,
    boot: String,
    faults: conn::Faults,
) -> Monitor {
    let current: std::sync::Mutex<Option<watch::Sender<bool>>> = std::sync::Mutex::new(None);
    monitor.register(move |restarts| {
        let settings = &queue.shared.settings;
        let config = storage_config::<J>(settings);
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
            budget: settings.pool.redis_retry,
            orphan_timeout: settings.pool.orphan_timeout,
        };
        let conn = conn::QueueConn::new(redis.clone(), &config, faults.clone(), retry);
        let storage: RedisStorage<J, conn::QueueConn> = RedisStorage::new(conn).with_config(config);
        let poll = poll::Gated::new(settings.pool.poll_interval, queue.permits.clone());
        WorkerBuilder::new(worker_name(J::NAME, &boot, restarts))
            .backend(storage.poll_with_strategy(poll))
            .parallelize(tokio::spawn)
            // Above our own permit count so fetched jobs never wait in apalis's buffer.
            .concurrency(settings.pool.concurrency + settings.pool.prefetch)
            .data(queue)
            .build(run_job::<J>)
    })
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

fn register_cron<J: Job>(
    monitor: Monitor,
    schedule: cron::Schedule,
    redis: ConnectionManager,
    make: fn(i64) -> J,
    boot: String,
) -> Monitor {
    let cron = Cron {
        queue: JobQueue::<J>::with_idempotency(redis, Duration::from_secs(7 * 86_400)),
        make,
    };
    monitor.register(move |restarts| {
        WorkerBuilder::new(worker_name(&format!("cron-{}", J::NAME), &boot, restarts))
            .backend(CronScheduler::new(schedule.clone()))
            .data(cron.clone())
            .build(on_tick::<J>)
    })
}

fn boxed<J: Job, F, Fut>(f: F) -> Handler<J>
where
    F: Fn(J, Arc<Shared>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    Arc::new(move |job, shared| Box::pin(f(job, shared)))
}

/// What every queue's registration needs.
struct Setup {
    shared: Arc<Shared>,
    redis: ConnectionManager,
    boot: String,
    shutdown: watch::Receiver<bool>,
    faults: conn::Faults,
}

impl Setup {
    /// Registers the worker of job `J` with its handler and attempt limit.
    fn queue<J, F, Fut>(&self, monitor: Monitor, max_attempts: u32, handler: F) -> Monitor
    where
        J: Job,
        F: Fn(J, Arc<Shared>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let settings = &self.shared.settings;
        let queue = Queue {
            shared: self.shared.clone(),
            policy: Policy {
                max_attempts,
                backoff_base: settings.retry.backoff_base,
                backoff_max: settings.retry.backoff_max,
                inprocess_wait_max: settings.retry.inprocess_wait_max,
                unavailable_wait: settings.retry.unavailable_wait,
                timeout: settings.retry.job_timeout,
                dlq_max_len: settings.retry.dlq_max_len,
            },
            permits: Arc::new(Semaphore::new(settings.pool.concurrency)),
            handler: boxed(handler),
            shutdown: self.shutdown.clone(),
            replaced: watch::channel(false).1,
        };
        register(
            monitor,
            queue,
            self.redis.clone(),
            self.boot.clone(),
            self.faults.clone(),
        )
    }
}

/// Runs the pool until SIGTERM/Ctrl-C (clean exit) or until a worker keeps dying (exit 1).
pub async fn run(settings: RunSettings) -> anyhow::Result<()> {
    igsales_config::prometheus();
    let redis = igsales_jobs::redis_conn::connect(&settings.redis).await?;
    let db = Db::connect(&settings.db).await?;
    let meta = MetaClient::new(&settings.graph, settings.dns.cache);
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", settings.pool.metrics_port))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on METRICS_PORT {}: {e}",
                settings.pool.metrics_port
            )
        })?;
    let llm = crate::sales::llm::LlmClient::new(&settings.model, settings.dns.cache);
    let shared = Arc::new(Shared {
        vault: Vault::new(&settings.keys),
        gate: crate::sales::graph::GraphGate::new(redis.clone(), &settings.limits),
        db,
        redis: redis.clone(),
        meta,
        llm,
        settings,
    });
    let settings = &shared.settings;
    let (stop_tx, stop_rx) = watch::channel(false);
    let boot = format!(
        "{:04x}",
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            & 0xffff
    );

    tokio::spawn(http::serve(listener, shared.clone()));
    tokio::spawn(self::metrics::sample_queues(
        redis.clone(),
        QUEUES.to_vec(),
        Duration::from_secs(5),
    ));

    let setup = Setup {
        shared: shared.clone(),
        redis: redis.clone(),
        boot: boot.clone(),
        shutdown: stop_rx.clone(),
        faults: conn::Faults::default(),
    };
    let mut monitor = Monitor::new();
    monitor = setup.queue(monitor, settings.retry.inbound_event(), |j, s| async move {
        crate::handlers::inbound::run(j, &s).await
    });
    // Its own permits and fetch loop: echoes confirm sends however far the model is behind.
    monitor = setup.queue(
        monitor,
        settings.retry.inbound_event(),
        |j: InboundSignalV1, s| async move { crate::handlers::inbound::run(j.0, &s).await },
    );
    monitor = setup.queue(monitor, settings.retry.send_message(), |j, s| async move {
        crate::handlers::send::run(j, &s).await
    });
    monitor = setup.queue(monitor, settings.retry.refresh_token(), |j, s| async move {
        crate::handlers::tokens::refresh(j, &s).await
    });
    monitor = setup.queue(monitor, settings.retry.max_attempts, |j, s| async move {
        crate::handlers::tokens::sweep(j, &s).await
    });
    monitor = setup.queue(monitor, settings.retry.max_attempts, |j, s| async move {
        crate::handlers::housekeeping::run(j, &s).await
    });
    monitor = setup.queue(monitor, settings.retry.max_attempts, |j, s| async move {
        crate::handlers::canary::run(j, &s).await
    });
    let token_cron = settings.schedule.token_refresh.clone();
    let housekeeping_cron = settings.schedule.housekeeping.clone();
    monitor = register_cron(
        monitor,
        token_cron,
        redis.clone(),
        |tick| TokenRefreshSweepV1 {
            tick,
            delivery: Default::default(),
        },
        boot.clone(),
    );
    monitor = register_cron(
        monitor,
        housekeeping_cron,
        redis.clone(),
        |tick| HousekeepingV1 {
            tick,
            delivery: Default::default(),
        },
        boot.clone(),
    );

    // A worker that keeps dying (Redis gone for good, a poisoned queue) stops the whole
    // process: a live process with a dead worker would look healthy and do nothing.
    let gave_up = Arc::new(AtomicBool::new(false));
    let restarts_seen = Arc::new(AtomicUsize::new(0));
    let budget = std::sync::Mutex::new(RestartBudget::new(
        settings.pool.max_restarts as usize,
        settings.pool.restart_window,
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
            .shutdown_timeout(settings.pool.shutdown_timeout)
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
    tracing::info!(queues = ?QUEUES, concurrency = settings.pool.concurrency, "worker pool running");
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
