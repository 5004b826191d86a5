//! On-demand benchmark of `worker run` (not run in CI; see `scripts/bench-worker`).
//!
//! It starts the fake Meta and the fake LLM in process, seeds merchants with connected accounts
//! and a catalog in the given (migrated) database, runs the release `worker` binary against the
//! given Redis database, and measures:
//! - `runtime`: trivial canary jobs per second and push→start pickup latency (p50/p99);
//! - `pipeline`: inbound DMs → model → Graph sends per second, with the fake model answering
//!   after `--llm-latency-ms`, plus the worker's peak RSS and thread count.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::Utc;
use clap::Parser;
use igsales_config::{PgUrl, parse_key_ring};
use igsales_jobs::{CanaryV1, InboundEventV1, JobQueue};
use igsales_meta::webhook::EventKind;
use igsales_schema::{Db, Vault};
use igsales_tests::cli::key_entry;
use igsales_tests::db::db_settings;
use igsales_tests::fake_llm::{FakeLlm, FakeLlmConfig};
use igsales_tests::fake_meta::{FakeMeta, FakeMetaConfig, webhook as wh};
use igsales_tests::process::free_port;
use igsales_tests::worker_env;

#[derive(Parser)]
struct Args {
    /// runtime | pipeline
    mode: String,
    #[arg(long)]
    worker_bin: String,
    /// The app role's URL of a migrated database.
    #[arg(long)]
    database_url: String,
    /// A Redis database the benchmark may flush.
    #[arg(long)]
    redis_url: String,
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    #[arg(long, default_value_t = 200)]
    pickup_samples: usize,
    #[arg(long, default_value_t = 2_000)]
    events: usize,
    #[arg(long, default_value_t = 20)]
    accounts: usize,
    #[arg(long, default_value_t = 0)]
    llm_latency_ms: u64,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Postgres connections of the worker: on 2 cores shared with Postgres, a few beat many.
    #[arg(long, default_value_t = 8)]
    db_pool: usize,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn proc_status(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l[field.len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

fn percentile(sorted: &[i64], q: f64) -> i64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

async fn redis(url: &str) -> anyhow::Result<igsales_jobs::RedisConn> {
    let manager = redis::Client::open(url)?.get_connection_manager().await?;
    Ok(igsales_jobs::RedisConn::fixed(manager))
}

fn bench_env(args: &Args, graph: &str, llm: &str) -> worker_env::Env {
    vec![
        ("DATABASE_URL", args.database_url.clone()),
        ("DATABASE_POOL_SIZE", args.db_pool.to_string()),
        ("REDIS_URL", args.redis_url.clone()),
        ("ENCRYPTION_KEY", key_entry(1, 1)),
        ("IG_APP_SECRET", "fake-ig-app-secret".into()),
        ("GRAPH_API_VERSION", "v26.0".into()),
        ("GRAPH_API_BASE_URL", graph.into()),
        ("OPENAI_API_KEY", "test-llm-key".into()),
        ("OPENAI_BASE_URL", llm.into()),
        ("METRICS_PORT", free_port().to_string()),
        ("WORKER_CONCURRENCY", args.concurrency.to_string()),
        ("WORKER_PREFETCH", "16".into()),
        ("GRAPH_SEND_RATE_PER_SEC", "100".into()),
        ("TOKEN_REFRESH_CRON", "0 0 0 1 1 *".into()),
        ("HOUSEKEEPING_CRON", "0 0 0 1 1 *".into()),
        ("RUST_LOG", "warn".into()),
    ]
}

async fn runtime(args: &Args) -> anyhow::Result<()> {
    let env = bench_env(args, "http://127.0.0.1:9", "http://127.0.0.1:9/v1");
    let worker = worker_env::start(&args.worker_bin, &env);
    let mut conn = redis(&args.redis_url).await?;
    let queue = JobQueue::<CanaryV1>::new(conn.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Pickup: one at a time into an idle pool.
    let mut latencies = Vec::new();
    for i in 0..args.pickup_samples {
        let id = format!("pickup-{i}");
        let pushed = now_ms();
        queue
            .push(CanaryV1 {
                id: id.clone(),
                pushed_ms: pushed,
                ..CanaryV1::default()
            })
            .await?;
        let started = loop {
            let s: Option<i64> = redis::cmd("LINDEX")
                .arg(format!("canary:{id}:started_ms"))
                .arg(0)
                .query_async(&mut conn)
                .await?;
            if let Some(s) = s {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        latencies.push(started - pushed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies.sort_unstable();

    // Throughput: a backlog of trivial jobs.
    let done_before: usize = redis::cmd("SCARD")
        .arg("canary:done")
        .query_async(&mut conn)
        .await?;
    let t = Instant::now();
    for chunk in (0..args.jobs).collect::<Vec<_>>().chunks(1000) {
        queue
            .push_all(
                chunk
                    .iter()
                    .map(|i| CanaryV1 {
                        id: format!("bulk-{i}"),
                        ..CanaryV1::default()
                    })
                    .collect(),
            )
            .await?;
    }
    loop {
        let done: usize = redis::cmd("SCARD")
            .arg("canary:done")
            .query_async(&mut conn)
            .await?;
        if done - done_before >= args.jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "runtime: jobs={} jobs_per_sec={:.0} pickup_p50_ms={} pickup_p99_ms={} pickup_max_ms={} rss_peak={} threads={}",
        args.jobs,
        args.jobs as f64 / secs,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
        proc_status(worker.child.id(), "VmHWM:"),
        proc_status(worker.child.id(), "Threads:"),
    );
    Ok(())
}

async fn pipeline(args: &Args) -> anyhow::Result<()> {
    let fake = FakeMeta::start(FakeMetaConfig::default()).await;
    let llm = FakeLlm::start(FakeLlmConfig::default()).await;
    llm.set_latency(Duration::from_millis(args.llm_latency_ms));
    let url = PgUrl::parse(&args.database_url).map_err(anyhow::Error::msg)?;
    let db = Db::connect(&db_settings(url, 4, Duration::from_secs(5))).await?;
    let vault = Vault::new(&parse_key_ring(&key_entry(1, 1)).map_err(anyhow::Error::msg)?);
    let accounts_made =
        igsales_tests::shops::connected(&db, &vault, &fake, args.accounts, 30, "178414").await?;
    let env = bench_env(args, &fake.base_url(), &llm.base_url());
    let worker = worker_env::start(&args.worker_bin, &env);
    let queue = JobQueue::<InboundEventV1>::new(redis(&args.redis_url).await?);
    let jobs: Vec<InboundEventV1> = (0..args.events)
        .map(|i| {
            let (m, page) = &accounts_made[i % accounts_made.len()];
            let mid = format!("bench-{}-{i}", now_ms());
            let event = wh::text_message(
                &format!("9{i:08}"),
                page,
                &mid,
                "Do you have product 7 in stock?",
                now_ms(),
            );
            InboundEventV1 {
                merchant_id: m.0,
                instagram_account_id: page.clone(),
                event_id: igsales_meta::event_id::message(&mid),
                kind: EventKind::Message,
                entry_time_ms: None,
                received_at: Utc::now(),
                event: serde_json::value::RawValue::from_string(event.to_string()).expect("raw"),
                delivery: Default::default(),
            }
        })
        .collect();
    let t = Instant::now();
    for chunk in jobs.chunks(500) {
        queue.push_all(chunk.to_vec()).await?;
    }
    let mut peak_threads = 0u64;
    loop {
        peak_threads = peak_threads.max(
            proc_status(worker.child.id(), "Threads:")
                .parse()
                .unwrap_or(0),
        );
        if fake.sent_count() >= args.events || t.elapsed() > Duration::from_secs(600) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "pipeline: events={} accounts={} llm_latency_ms={} sent={} messages_per_sec={:.0} llm_max_in_flight={} rss_peak={} threads_peak={}",
        args.events,
        args.accounts,
        args.llm_latency_ms,
        fake.sent_messages().len(),
        fake.sent_messages().len() as f64 / secs,
        llm.max_in_flight(),
        proc_status(worker.child.id(), "VmHWM:"),
        peak_threads,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut conn = redis(&args.redis_url).await?;
    let () = redis::cmd("FLUSHDB").query_async(&mut conn).await?;
    match args.mode.as_str() {
        "runtime" => runtime(&args).await,
        "pipeline" => pipeline(&args).await,
        other => anyhow::bail!("unknown mode {other}: runtime | pipeline"),
    }
}
