//! The chaos run of issue #10 (`scripts/chaos`, and a CI-sized run in `cargo test`): the real
//! `ingress` and two `worker run` processes against real Postgres and a Redis of its own with AOF
//! on, the fake Meta and the fake model, under a stream of DMs delivered Meta-style while faults
//! are injected on a schedule. It counts what the fake Meta accepted: every DM acknowledged 200
//! must have its reply sent once (or an explicit dead letter), never twice.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use igsales_config::{PgUrl, parse_key_ring};
use igsales_schema::{Db, Vault};
use tokio::sync::Semaphore;

use crate::cli::key_entry;
use crate::db::db_settings;
use crate::fake_llm::{FakeLlm, FakeLlmConfig};
use crate::fake_meta::{Endpoint, Failure, FakeMeta, FakeMetaConfig, webhook as wh};
use crate::process::{Process, free_port};
use crate::proxy::{Proxy, target, through};
use crate::redis::PrivateRedis;

const SECRET: &str = "chaos-ig-app-secret";

/// What to run and when to break things (offsets from the first DM).
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// Where the `ingress` and `worker` binaries are.
    pub bins: PathBuf,
    /// The app role's URL of a migrated database (the harness puts a cuttable proxy in front).
    pub database_url: String,
    pub dms: usize,
    pub accounts: usize,
    /// DMs are spread evenly over this long.
    pub send_for: Duration,
    /// `kill -9` of a worker (alternately) this often; the worker is restarted at once.
    pub kill_every: Option<Duration>,
    pub redis_stall: Option<(Duration, Duration)>,
    pub redis_restart: Option<Duration>,
    pub pg_outage: Option<(Duration, Duration)>,
    /// A share of deliveries sent twice at once, as Meta sometimes does.
    pub duplicate_share: f64,
    /// Meta failures: one of 5xx, 429/throttle, or a timeout after Meta took the send, injected
    /// this often.
    pub graph_fault_every: Option<Duration>,
    /// Give up waiting for the queues to drain after this long.
    pub drain_within: Duration,
    /// `ECHO_CONFIRM_SECS`: a part whose send was cut by a kill waits this long for an echo
    /// before it is sent (once more); it must outlast the Postgres outage and a worker
    /// recovery, here deferred by the Redis restart too: 2 × the 4 s orphan timeout, a
    /// heartbeat and the 2 s HTTP timeout (the worker warns below one recovery).
    pub echo_confirm: Duration,
}

#[derive(Debug, Default)]
pub struct ChaosReport {
    pub dms: usize,
    pub acknowledged: usize,
    pub answered: usize,
    pub sent_parts: usize,
    pub duplicate_sends: usize,
    pub lost: usize,
    pub dlq: HashMap<String, usize>,
    /// Dead letters by their reason (`none` for a record without one).
    pub dlq_reasons: HashMap<String, usize>,
    /// Acknowledged DMs without their whole reply whose dead letter names a reason.
    pub dead_dms: usize,
    pub faults: Vec<(String, usize)>,
    pub dms_per_sec: f64,
    pub drained_after: Duration,
    pub recoveries: Vec<(String, Duration)>,
    pub graph_faults: usize,
    pub duplicated_deliveries: usize,
    pub delivery_retries: usize,
}

impl ChaosReport {
    pub fn dlq_total(&self) -> usize {
        self.dlq.values().sum()
    }

    /// The one line of the issue.
    pub fn line(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k}:{n}"))
            .collect();
        format!(
            "dms={} answered={} sent_parts={} duplicate_sends={} lost={} dlq={} faults={}",
            self.dms,
            self.answered,
            self.sent_parts,
            self.duplicate_sends,
            self.lost,
            self.dlq_total(),
            faults.join(",")
        )
    }

    pub fn breakdown(&self) -> String {
        let mut out = format!(
            "acknowledged={} dms_per_sec={:.0} drained_after={:.1}s graph_faults={} duplicated_deliveries={} delivery_retries={}",
            self.acknowledged,
            self.dms_per_sec,
            self.drained_after.as_secs_f64(),
            self.graph_faults,
            self.duplicated_deliveries,
            self.delivery_retries,
        );
        for (fault, took) in &self.recoveries {
            out.push_str(&format!(
                "\nrecovery after {fault}: {:.1}s",
                took.as_secs_f64()
            ));
        }
        for (queue, n) in &self.dlq {
            out.push_str(&format!("\ndlq {queue}: {n}"));
        }
        for (reason, n) in &self.dlq_reasons {
            out.push_str(&format!("\ndead letters with reason {reason}: {n}"));
        }
        out
    }

    pub fn passed(&self) -> bool {
        self.duplicate_sends == 0 && self.lost == 0
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A cheap, seeded pseudo-random stream (xorshift): the harness needs spread, not secrecy.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A reply long enough to be two parts (≤ 1000 bytes each), with no prices to check.
fn standing_reply() -> String {
    let mut s = String::from("Olá! Temos sim, e com muito prazer. ");
    while s.len() < 1400 {
        s.push_str("Nossas peças são de algodão, feitas com cuidado, e chegam em poucos dias. ");
    }
    s
}

struct Procs {
    bins: PathBuf,
    worker_env: Vec<(&'static str, String)>,
    /// `None`: killed, or exited at start while Postgres was out of reach; started again by
    /// [`Procs::revive`], as an orchestrator would, without holding up the fault schedule.
    workers: Vec<Option<Process>>,
}

impl Procs {
    /// One attempt at starting a worker (it exits at start while Postgres is out of reach).
    async fn start_worker(&self) -> Option<Process> {
        let mut env = self.worker_env.clone();
        let port = free_port();
        env.retain(|(k, _)| *k != "METRICS_PORT");
        env.push(("METRICS_PORT", port.to_string()));
        let bin = self.bins.join("worker").display().to_string();
        tokio::task::spawn_blocking(move || Process::try_start(&bin, &["run"], &env, port))
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Starts every worker that is not running, once each.
    async fn revive(&mut self) {
        for i in 0..self.workers.len() {
            if self.workers[i].is_none() {
                self.workers[i] = self.start_worker().await;
            }
        }
    }

    /// Sleeps until `until`, restarting missing workers about every 500 ms meanwhile.
    async fn wait_until(&mut self, until: Instant) {
        loop {
            self.revive().await;
            let now = Instant::now();
            if now >= until {
                return;
            }
            tokio::time::sleep((until - now).min(Duration::from_millis(500))).await;
        }
    }

    /// `kill -9` of worker `i`, restarted at once if it can start.
    async fn kill(&mut self, i: usize) {
        if let Some(mut w) = self.workers[i].take() {
            w.signal("-KILL");
            let _ = w.child.wait();
        }
        self.revive().await;
    }

    /// A running worker that exited by itself.
    fn dead(&mut self) -> Option<usize> {
        (0..self.workers.len()).find(|&i| {
            self.workers[i]
                .as_mut()
                .is_some_and(|w| w.exited().is_some())
        })
    }

    /// A short pause that keeps restarting missing workers.
    async fn tick(&mut self) {
        self.wait_until(Instant::now() + Duration::from_millis(200))
            .await;
    }

    fn running(&self) -> impl Iterator<Item = &Process> {
        self.workers.iter().flatten()
    }
}

async fn llen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> usize {
    redis::cmd("LLEN")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap_or(0)
}

/// Jobs not finished yet: queued, scheduled or in flight, over every queue.
async fn backlog(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let mut n = 0;
    for q in ["inbound_event", "inbound_signal", "send_message"] {
        n += llen(conn, &format!("{q}:active")).await;
        n += redis::cmd("ZCARD")
            .arg(format!("{q}:scheduled"))
            .query_async::<usize>(conn)
            .await
            .unwrap_or(0);
        let sets: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{q}:inflight:*"))
            .query_async(conn)
            .await
            .unwrap_or_default();
        for s in sets {
            n += redis::cmd("SCARD")
                .arg(&s)
                .query_async::<usize>(conn)
                .await
                .unwrap_or(0);
        }
    }
    n
}

/// Runs the whole scenario and counts.
pub async fn run(cfg: ChaosConfig) -> anyhow::Result<ChaosReport> {
    let mut redis_server = PrivateRedis::start_persistent();
    let redis_url = redis_server.url();
    let pg_proxy = Proxy::start(target(&cfg.database_url)).await;
    let app_db_url = through(&cfg.database_url, pg_proxy.addr());
    let fake = FakeMeta::start(FakeMetaConfig {
        client_secret: SECRET.into(),
        ..FakeMetaConfig::default()
    })
    .await;
    let llm = FakeLlm::start(FakeLlmConfig::default()).await;
    llm.set_reply(Some(standing_reply()));
    llm.set_latency(Duration::from_millis(20));
    let url = PgUrl::parse(&cfg.database_url).map_err(anyhow::Error::msg)?;
    let db = Db::connect(&db_settings(url, 2, Duration::from_secs(5))).await?;
    let vault = Vault::new(&parse_key_ring(&key_entry(1, 7)).map_err(anyhow::Error::msg)?);
    let pages: Vec<String> = crate::shops::connected(&db, &vault, &fake, cfg.accounts, 5, "178415")
        .await?
        .into_iter()
        .map(|(_, page)| page)
        .collect();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let webhook = format!("{base}/webhooks/instagram");
    fake.deliver_echoes_to(&webhook, SECRET);
    let common = vec![
        ("DATABASE_URL", app_db_url.clone()),
        ("REDIS_URL", redis_url.clone()),
        ("REDIS_RESPONSE_TIMEOUT_MS", "1000".to_owned()),
        ("DATABASE_CONNECT_TIMEOUT_MS", "1000".to_owned()),
        ("ENCRYPTION_KEY", key_entry(1, 7)),
        ("IG_APP_SECRET", SECRET.to_owned()),
        ("GRAPH_API_VERSION", "v26.0".to_owned()),
        ("GRAPH_API_BASE_URL", fake.base_url()),
        (
            "RUST_LOG",
            std::env::var("CHAOS_LOG").unwrap_or_else(|_| "error".to_owned()),
        ),
    ];
    let mut ingress_env = common.clone();
    ingress_env.extend([
        ("META_APP_ID", "990602627938098".to_owned()),
        ("API_BASE_URL", base.clone()),
        ("PORT", port.to_string()),
        ("META_WEBHOOK_VERIFY_TOKEN", "chaos-verify-token".to_owned()),
        (
            "ADMIN_API_TOKEN",
            "chaos-admin-token-0123456789abcdef".to_owned(),
        ),
        ("OAUTH_SUCCESS_REDIRECT_URL", format!("{base}/healthz")),
        ("OAUTH_FAILURE_REDIRECT_URL", format!("{base}/healthz")),
        ("IG_OAUTH_BASE_URL", fake.base_url()),
        (
            "IG_AUTHORIZE_URL",
            format!("{}/oauth/authorize", fake.base_url()),
        ),
    ]);
    let mut worker_env = common;
    worker_env.extend([
        ("OPENAI_API_KEY", FakeLlmConfig::default().api_key),
        ("OPENAI_BASE_URL", llm.base_url()),
        ("OPENAI_MODEL", "fake-model".to_owned()),
        ("METRICS_PORT", "0".to_owned()),
        ("WORKER_CONCURRENCY", "32".to_owned()),
        ("WORKER_PREFETCH", "16".to_owned()),
        ("WORKER_POLL_INTERVAL_MS", "50".to_owned()),
        ("WORKER_ORPHAN_TIMEOUT_SECS", "4".to_owned()),
        ("DATABASE_POOL_SIZE", "8".to_owned()),
        ("META_HTTP_TIMEOUT_MS", "2000".to_owned()),
        ("GRAPH_SEND_RATE_PER_SEC", "100".to_owned()),
        ("GRAPH_THROTTLE_WAIT_SECS", "1".to_owned()),
        ("GRAPH_MAX_PAUSE_SECS", "2".to_owned()),
        ("JOB_BACKOFF_BASE_MS", "200".to_owned()),
        ("JOB_BACKOFF_MAX_MS", "2000".to_owned()),
        ("JOB_UNAVAILABLE_WAIT_MS", "1000".to_owned()),
        ("ECHO_CONFIRM_SECS", cfg.echo_confirm.as_secs().to_string()),
        ("TOKEN_REFRESH_CRON", "0 0 0 1 1 *".to_owned()),
        ("HOUSEKEEPING_CRON", "0 0 0 1 1 *".to_owned()),
    ]);
    let _ingress = Process::start(
        &cfg.bins.join("ingress").display().to_string(),
        &[],
        &ingress_env,
        port,
    );
    let mut procs = Procs {
        bins: cfg.bins.clone(),
        worker_env,
        workers: vec![None, None],
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while procs.running().count() < 2 {
        anyhow::ensure!(Instant::now() < deadline, "the workers did not start");
        procs.tick().await;
    }

    // The DMs: one per customer, delivered Meta-style (retried until 200, some twice at once).
    let acknowledged = Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
    let retries = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(64));
    let started = Instant::now();
    let started_ms = now_ms();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let duplicated;
    let gap = cfg.send_for.as_secs_f64() / cfg.dms.max(1) as f64;
    let sender = {
        let acknowledged = acknowledged.clone();
        let retries = retries.clone();
        let pages = pages.clone();
        let webhook = webhook.clone();
        let dms = cfg.dms;
        let share = cfg.duplicate_share;
        let plan: Vec<bool> = (0..dms).map(|_| rng.next() < share).collect();
        duplicated = plan.iter().filter(|t| **t).count();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for (i, twice) in plan.into_iter().enumerate() {
                let due = started + Duration::from_secs_f64(gap * i as f64);
                tokio::time::sleep_until(due.into()).await;
                let page = pages[i % pages.len()].clone();
                let customer = format!("8{i:09}");
                let ts = now_ms();
                let body = wh::envelope(&[wh::messaging_entry(
                    &page,
                    ts,
                    vec![wh::text_message(
                        &customer,
                        &page,
                        &format!("chaos-{i}"),
                        "Oi! Vocês têm camiseta de algodão?",
                        ts,
                    )],
                )])
                .to_string();
                for _ in 0..if twice { 2 } else { 1 } {
                    let (permits, acknowledged, retries) =
                        (permits.clone(), acknowledged.clone(), retries.clone());
                    let (url, body, customer) = (webhook.clone(), body.clone(), customer.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut pause = Duration::from_millis(200);
                        for attempt in 0..40 {
                            let Ok(_permit) = permits.clone().acquire_owned().await else {
                                return;
                            };
                            let (u, b) = (url.clone(), body.clone());
                            let status =
                                tokio::task::spawn_blocking(move || wh::deliver(&u, SECRET, &b).0)
                                    .await
                                    .unwrap_or(0);
                            if status == 200 {
                                if let Ok(mut a) = acknowledged.lock() {
                                    a.insert(customer);
                                }
                                return;
                            }
                            if attempt > 0 {
                                retries.fetch_add(1, Ordering::Relaxed);
                            }
                            drop(_permit);
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(5));
                        }
                    }));
                }
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    };

    // Meta's own failures, at random among the transient kinds.
    let graph_faults = Arc::new(AtomicUsize::new(0));
    let injector = cfg.graph_fault_every.map(|every| {
        let fake = fake.clone();
        let n = graph_faults.clone();
        tokio::spawn(async move {
            let mut rng = Rng(0x2545_f491_4f6c_dd1d);
            loop {
                tokio::time::sleep(every).await;
                let f = match (rng.next() * 4.0) as u32 {
                    0 => Failure::server_error(500),
                    1 => Failure::too_many_requests(),
                    2 => Failure::buc_throttle(1),
                    _ => Failure::hang(Duration::from_secs(3)),
                };
                fake.fail_next(Endpoint::Messages, f);
                n.fetch_add(1, Ordering::Relaxed);
            }
        })
    });

    // The fault schedule.
    let mut events: Vec<(Duration, &'static str)> = Vec::new();
    if let Some((at, for_)) = cfg.redis_stall {
        events.push((at, "redis_stall"));
        events.push((at + for_, "redis_stall_end"));
    }
    if let Some(at) = cfg.redis_restart {
        events.push((at, "redis_restart"));
    }
    if let Some((at, for_)) = cfg.pg_outage {
        events.push((at, "pg_outage"));
        events.push((at + for_, "pg_outage_end"));
    }
    if let Some(every) = cfg.kill_every {
        let mut t = every;
        while t < cfg.send_for + Duration::from_secs(5) {
            events.push((t, "kill"));
            t += every;
        }
    }
    events.sort_by_key(|(t, _)| *t);
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    let mut recoveries = Vec::new();
    let mut admin = redis::Client::open(redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let mut kills = 0usize;
    for (at, what) in events {
        procs.wait_until(started + at).await;
        let before = fake.sent_count();
        match what {
            "redis_stall" => {
                // The server itself stops answering anyone for the stall.
                let ms = cfg.redis_stall.map_or(0, |(_, d)| d.as_millis() as u64);
                let _: redis::RedisResult<()> = redis::cmd("CLIENT")
                    .arg("PAUSE")
                    .arg(ms)
                    .arg("ALL")
                    .query_async(&mut admin)
                    .await;
            }
            "redis_restart" => {
                redis_server.restart_gracefully();
                admin = redis::Client::open(redis_url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
            }
            "pg_outage" => pg_proxy.cut(),
            "pg_outage_end" => pg_proxy.restore().await,
            "kill" => {
                procs.kill(kills % 2).await;
                kills += 1;
            }
            _ => {}
        }
        if !what.ends_with("_end") {
            *counts.entry(what).or_default() += 1;
        }
        // Recovery: until sends flow again (for faults that stop them), watched beside the
        // schedule so the next fault comes on time.
        if matches!(
            what,
            "redis_stall_end" | "redis_restart" | "pg_outage_end" | "kill"
        ) {
            let fake = fake.clone();
            recoveries.push(tokio::spawn(async move {
                let t = Instant::now();
                while fake.sent_count() <= before && t.elapsed() < Duration::from_secs(60) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (what.trim_end_matches("_end").to_owned(), t.elapsed())
            }));
        }
        if let Some(i) = procs.dead() {
            anyhow::bail!("worker {i} exited by itself during the run");
        }
    }
    while !sender.is_finished() {
        procs.tick().await;
    }
    let _ = sender.await;
    let send_secs = started.elapsed().as_secs_f64();
    // Scripted failures queue up at the fake: none past the sending phase.
    if let Some(t) = injector {
        t.abort();
    }
    fake.clear_failures();

    // Drain: every acknowledged DM answered or dead, the queues empty, for 3 s running.
    let acked: HashSet<String> = acknowledged.lock().map(|a| a.clone()).unwrap_or_default();
    let deadline = Instant::now() + cfg.drain_within;
    let mut calm_since: Option<Instant> = None;
    loop {
        let answered: HashSet<String> = fake
            .sent_messages()
            .into_iter()
            .map(|m| m.recipient_id)
            .collect();
        let pending = backlog(&mut admin).await;
        let unanswered = acked.iter().filter(|c| !answered.contains(*c)).count();
        if pending == 0 {
            let since = *calm_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(3) {
                break;
            }
        } else {
            calm_since = None;
        }
        if Instant::now() > deadline {
            eprintln!("chaos: not drained: {pending} jobs left, {unanswered} DMs unanswered");
            for w in procs.running() {
                let url = format!("http://127.0.0.1:{}/metrics", w.port);
                let text = tokio::task::spawn_blocking(move || {
                    let agent = crate::http::agent(Duration::from_secs(10));
                    crate::http::try_answer(agent.get(&url).call())
                        .map(|a| a.body)
                        .unwrap_or_default()
                })
                .await
                .unwrap_or_default();
                for line in text
                    .lines()
                    .filter(|l| l.contains("running") && !l.starts_with('#'))
                {
                    eprintln!("chaos: worker {}: {line}", w.child.id());
                }
            }
            for q in ["inbound_event", "inbound_signal", "send_message"] {
                let active = llen(&mut admin, &format!("{q}:active")).await;
                let scheduled: usize = redis::cmd("ZCARD")
                    .arg(format!("{q}:scheduled"))
                    .query_async(&mut admin)
                    .await
                    .unwrap_or(0);
                eprintln!("chaos: {q}: active={active} scheduled={scheduled}");
                let sets: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{q}:inflight:*"))
                    .query_async(&mut admin)
                    .await
                    .unwrap_or_default();
                for set in sets {
                    let ids: Vec<String> = redis::cmd("SMEMBERS")
                        .arg(&set)
                        .query_async(&mut admin)
                        .await
                        .unwrap_or_default();
                    let worker = set.rsplit(':').next().unwrap_or("").to_owned();
                    let seen: Option<f64> = redis::cmd("ZSCORE")
                        .arg(format!("{q}:workers"))
                        .arg(&worker)
                        .query_async(&mut admin)
                        .await
                        .unwrap_or(None);
                    if !ids.is_empty() {
                        eprintln!("chaos: {set}: {ids:?} (worker last seen {seen:?})");
                    }
                    for id in &ids {
                        let meta: HashMap<String, String> = redis::cmd("HGETALL")
                            .arg(format!("{q}:meta:{id}"))
                            .query_async(&mut admin)
                            .await
                            .unwrap_or_default();
                        let data: Option<String> = redis::cmd("HGET")
                            .arg(format!("{q}:data"))
                            .arg(id)
                            .query_async(&mut admin)
                            .await
                            .unwrap_or(None);
                        eprintln!("chaos: {id}: meta={meta:?} data={}", data.is_some());
                    }
                }
            }
            break;
        }
        procs.tick().await;
    }
    let drained_after = started.elapsed();
    let mut recovered = Vec::new();
    for r in recoveries {
        if let Ok(took) = r.await {
            recovered.push(took);
        }
    }

    // Count.
    let sent = fake.sent_messages();
    let mut per_part: HashMap<(String, String), usize> = HashMap::new();
    for m in &sent {
        *per_part
            .entry((m.recipient_id.clone(), m.text.clone().unwrap_or_default()))
            .or_default() += 1;
    }
    for ((customer, text), n) in &per_part {
        if *n > 1 {
            let at: Vec<String> = sent
                .iter()
                .filter(|m| &m.recipient_id == customer && m.text.as_ref() == Some(text))
                .map(|m| format!("{:.1}s", (m.at_ms - started_ms) as f64 / 1000.0))
                .collect();
            eprintln!(
                "chaos: duplicate: customer {customer} got one part {n} times, at {}",
                at.join(", ")
            );
        }
    }
    // Distinct parts each customer got; every reply is the same text, so the most any
    // customer got is a whole reply.
    let mut parts_of: HashMap<String, usize> = HashMap::new();
    for (c, _) in per_part.keys() {
        *parts_of.entry(c.clone()).or_default() += 1;
    }
    let parts_per_reply = parts_of.values().copied().max().unwrap_or(1);
    let mut dlq = HashMap::new();
    let mut dlq_reasons: HashMap<String, usize> = HashMap::new();
    let mut dead_customers = HashSet::new();
    for q in [
        "inbound_event",
        "inbound_signal",
        "send_message",
        "webhook_invalid",
    ] {
        let raws: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("dlq:{q}"))
            .arg(0)
            .arg(-1)
            .query_async(&mut admin)
            .await
            .unwrap_or_default();
        if !raws.is_empty() {
            dlq.insert(q.to_owned(), raws.len());
        }
        for raw in raws {
            let v: serde_json::Value = serde_json::from_str(&raw).unwrap_or_default();
            eprintln!(
                "chaos: dead letter in {q}: reason={} error={}",
                v["reason"], v["error"]
            );
            *dlq_reasons
                .entry(v["reason"].as_str().unwrap_or("none").to_owned())
                .or_default() += 1;
            // Only a record with an explicit reason accounts for a DM.
            if v["reason"].as_str().is_none() {
                continue;
            }
            let p = &v["payload"];
            let customer = p["recipient_igsid"]
                .as_str()
                .or_else(|| p["event"]["sender"]["id"].as_str())
                .map(str::to_owned);
            if let Some(c) = customer {
                dead_customers.insert(c);
            }
        }
    }
    let (whole, unanswered): (Vec<&String>, Vec<&String>) = acked
        .iter()
        .partition(|c| parts_of.get(*c).copied().unwrap_or(0) >= parts_per_reply);
    let dead_dms = unanswered
        .iter()
        .filter(|c| dead_customers.contains(**c))
        .count();
    let faults: Vec<(String, usize)> = ["kill", "redis_restart", "redis_stall", "pg_outage"]
        .iter()
        .map(|k| ((*k).to_owned(), counts.get(k).copied().unwrap_or(0)))
        .collect();
    Ok(ChaosReport {
        dms: cfg.dms,
        acknowledged: acked.len(),
        answered: whole.len(),
        sent_parts: per_part.len(),
        duplicate_sends: per_part.values().map(|n| n - 1).sum(),
        lost: unanswered.len() - dead_dms,
        dlq,
        dlq_reasons,
        dead_dms,
        faults,
        dms_per_sec: acked.len() as f64 / send_secs.max(0.001),
        drained_after,
        recoveries: recovered,
        graph_faults: graph_faults.load(Ordering::Relaxed),
        duplicated_deliveries: duplicated,
        delivery_retries: retries.load(Ordering::Relaxed),
    })
}
