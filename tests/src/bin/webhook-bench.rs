//! `webhook-bench`: an on-demand load generator for `POST /webhooks/instagram` (not run in CI;
//! `scripts/bench-webhooks` sets everything up and runs it).
//!
//! Closed loop: `--connections` keep-alive HTTP/1.1 connections, each sending the next request
//! as soon as its previous answer arrived. Every request is built and signed before the clock
//! starts, so the generator spends its time on sockets only. A `--duplicates` fraction of the
//! requests re-send an earlier event, as Meta's redeliveries do; a re-send waits until the
//! original's answer came back (Meta redelivers after a failure, never concurrently).
//!
//! Afterwards every job in the apalis hash `inbound_event:data` is read back (HSCAN) and counted
//! per `(merchant_id, event_id)`: an event answered 200 (warm-up included) that is not exactly
//! one job is `lost`, and the process exits 1. Events never answered 200 are not checked.
//!
//! Latency is measured per request, from writing it to reading the whole answer; with a closed
//! loop it is the service time at `--connections` concurrent requests.
//!
//! `webhook-bench connect` connects the bench's Instagram accounts to their merchants through
//! the library (token encrypted by the vault), as the OAuth flow would.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use igsales_config::{Checker, DbArgs, KeyArgs, must};
use igsales_schema::{Db, MerchantId, Vault};
use igsales_tests::fake_meta::webhook::{envelope, messaging_entry, signature_256, text_message};
use igsales_tests::shops;
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The apalis hash holding every pushed `inbound_event` job, keyed by task id.
const JOB_HASH: &str = "inbound_event:data";
/// Linux reports /proc CPU times in USER_HZ, which is 100 on every mainstream architecture.
const USER_HZ: f64 = 100.0;

#[derive(Parser, Debug)]
#[command(
    name = "webhook-bench",
    about = "Load generator for POST /webhooks/instagram",
    args_conflicts_with_subcommands = true,
    args_override_self = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connects each `ACCOUNT=MERCHANT` of `--accounts` through the library, with an encrypted
    /// placeholder token (reads DATABASE_URL as the app role, and ENCRYPTION_KEY).
    Connect(ConnectArgs),
}

#[derive(Args, Debug)]
struct ConnectArgs {
    /// `ACCOUNT=MERCHANT_ID` pairs, separated by commas or newlines, or a file holding them.
    #[arg(long)]
    accounts: String,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    keys: KeyArgs,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The webhook endpoint, e.g. http://127.0.0.1:18080/webhooks/instagram.
    #[arg(long, required = true)]
    url: Option<String>,
    /// The app secret the ingress verifies `X-Hub-Signature-256` with.
    #[arg(long, env = "IG_APP_SECRET", hide_env_values = true, required = true)]
    secret: Option<String>,
    /// Connected Instagram account ids (`ACCOUNT` or `ACCOUNT=MERCHANT_ID`), separated by commas
    /// or newlines, or a file holding them. Without the merchant, it is learned from the jobs.
    #[arg(long, required = true)]
    accounts: Option<String>,
    /// Measured requests (duplicates included).
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Fraction of measured requests that re-send an earlier event.
    #[arg(long, default_value_t = 0.05)]
    duplicates: f64,
    /// Requests (all distinct events) sent before the clock starts.
    #[arg(long, default_value_t = 5_000)]
    warmup: usize,
    /// The Redis database the ingress writes to; without it, jobs are not checked.
    #[arg(long)]
    redis_url: Option<String>,
    /// Read the jobs from this Redis list instead of the apalis hash (the reference server of
    /// `scripts/bench-webhooks-compare` pushes there); the same check applies.
    #[arg(long)]
    job_list: Option<String>,
    /// The ingress's pid, to report its CPU time per request (from /proc/<pid>/stat).
    #[arg(long)]
    ingress_pid: Option<u32>,
    /// Generator runtime threads (1 keeps it off the second core as much as possible).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per-request timeout, in milliseconds (Meta gives up after 5 s).
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// Seed of the account and duplicate choice (the event ids are new on every run).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Connect(args)) => runtime(2).and_then(|rt| rt.block_on(connect(args))),
        None => runtime(cli.run.threads.max(1)).and_then(|rt| rt.block_on(run(cli.run))),
    };
    // 1: an acknowledged event is not exactly one job; 2: the benchmark could not run.
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .context("start the async runtime")
}

/// One `--accounts` item.
struct Account {
    id: String,
    merchant: Option<String>,
}

/// Items separated by commas or whitespace, either inline or in the file the value names.
fn parse_accounts(value: &str) -> anyhow::Result<Vec<Account>> {
    let text = if std::path::Path::new(value).is_file() {
        std::fs::read_to_string(value).with_context(|| format!("read {value}"))?
    } else {
        value.to_owned()
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for item in text.split(|c: char| c == ',' || c.is_whitespace()) {
        if item.is_empty() {
            continue;
        }
        let (id, merchant) = match item.split_once('=') {
            Some((a, m)) => (a, Some(m.to_owned())),
            None => (item, None),
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            bail!("account id {id:?} is not all digits");
        }
        if let Some(m) = &merchant {
            uuid::Uuid::parse_str(m).with_context(|| format!("merchant id of account {id}"))?;
        }
        if seen.insert(id.to_owned()) {
            out.push(Account {
                id: id.to_owned(),
                merchant,
            });
        }
    }
    if out.is_empty() {
        bail!("--accounts names no account");
    }
    Ok(out)
}

async fn connect(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let pairs = parse_accounts(&args.accounts)?;
    let mut c = Checker::new();
    let db = args.db.check(&mut c, None);
    let keys = args.keys.check(&mut c, None);
    c.finish().map_err(|e| anyhow!("{e}"))?;
    let db = Db::connect(&must(db)).await?;
    let vault = Vault::new(&must(keys).ring);
    for account in &pairs {
        let merchant = account
            .merchant
            .as_deref()
            .ok_or_else(|| anyhow!("account {} has no =MERCHANT_ID", account.id))?;
        let merchant = MerchantId(uuid::Uuid::parse_str(merchant)?);
        let page = account.id.clone();
        let token = format!("IGAA-bench-token-{page}");
        let seeded = shops::Account {
            username: "bench.shop",
            ..shops::Account::new(&vault, &page, &token).expires_in_days(60)
        };
        shops::connect(&db, merchant, &seeded)
            .await
            .with_context(|| format!("connect account {}", account.id))?;
    }
    eprintln!("connected {} accounts", pairs.len());
    Ok(ExitCode::SUCCESS)
}

/// splitmix64: enough randomness for choosing accounts and duplicates, no extra dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Where the requests go, from `--url` (plain http only: the ingress sits behind nginx).
struct Target {
    /// `host:port`, also the `Host` header.
    addr: String,
    path: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let u = url::Url::parse(url).context("--url")?;
    if u.scheme() != "http" {
        bail!("--url must be http:// (the ingress speaks plain HTTP behind nginx)");
    }
    let host = u.host_str().ok_or_else(|| anyhow!("--url has no host"))?;
    let port = u.port_or_known_default().unwrap_or(80);
    let mut path = u.path().to_owned();
    if let Some(q) = u.query() {
        path = format!("{path}?{q}");
    }
    Ok(Target {
        addr: format!("{host}:{port}"),
        path,
    })
}

/// One distinct event: its full HTTP request, ready to write.
struct Event {
    account: usize,
    event_id: String,
    request: Vec<u8>,
}

/// Everything the connections share: the requests, the order to send them in, and each
/// event's outcome.
struct Plan {
    events: Vec<Event>,
    /// The sending order: warm-up first, then the measured requests.
    slots: Vec<Slot>,
    /// Per event: 0 not answered yet, `ANSWERED`, `ANSWERED | ACKED` once any send got a 200.
    state: Vec<AtomicU8>,
    next: AtomicUsize,
}

/// One request to send: an event, for the first time or again.
#[derive(Clone, Copy)]
struct Slot {
    event: u32,
    resend: bool,
}

const ANSWERED: u8 = 1;
const ACKED: u8 = 2;

fn build_plan(args: &RunArgs, target: &Target, accounts: &[Account]) -> anyhow::Result<Plan> {
    if !(0.0..1.0).contains(&args.duplicates) {
        bail!("--duplicates must be in [0, 1)");
    }
    let secret = args.secret.as_deref().unwrap_or_default();
    let mut rng = Rng(args.seed);
    // Event ids are new on every run, so a Redis database that was not flushed cannot make
    // an earlier run's jobs count.
    let run = uuid::Uuid::new_v4().simple().to_string();
    let now_ms = chrono::Utc::now().timestamp_millis();
    // The sending order first: warm-up events, then measured requests where a `--duplicates`
    // share (spread evenly) re-send a random earlier measured event.
    let quota = |n: usize| (n as f64 * args.duplicates).round() as usize;
    let mut slots: Vec<Slot> = (0..args.warmup as u32)
        .map(|event| Slot {
            event,
            resend: false,
        })
        .collect();
    let mut fresh = args.warmup;
    for i in 0..args.requests {
        if quota(i + 1) > quota(i) && fresh > args.warmup {
            slots.push(Slot {
                event: (args.warmup + rng.below(fresh - args.warmup)) as u32,
                resend: true,
            });
        } else {
            slots.push(Slot {
                event: fresh as u32,
                resend: false,
            });
            fresh += 1;
        }
    }
    let mut events = Vec::with_capacity(fresh);
    for k in 0..fresh {
        let account = rng.below(accounts.len());
        let account_id = &accounts[account].id;
        // Meta's mids are ~180 base64 characters; similar sizes keep parsing and HMAC honest.
        let mid = format!(
            "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDAwNTM4ODY3MTkwOjM0MDI4MjM2Njg0MTcxMDMwMTI0NDI1ODU5OTE3NTI2OTQwODg3Nj{run}{k:012}ZDZD"
        );
        let customer = format!("11298426426{:05}", rng.below(100_000));
        let text = format!("Olá, tem em azul? 💙 tamanho M, pedido {k}");
        let ts = now_ms + k as i64;
        let body = envelope(&[messaging_entry(
            account_id,
            ts + 40,
            vec![text_message(&customer, account_id, &mid, &text, ts)],
        )]);
        let signature = signature_256(secret, body.as_bytes());
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: facebookexternalua\r\nContent-Type: application/json\r\nX-Hub-Signature-256: {signature}\r\nContent-Length: {}\r\n\r\n",
            target.path,
            target.addr,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body.as_bytes());
        events.push(Event {
            account,
            event_id: igsales_meta::event_id::message(&mid),
            request,
        });
    }
    let state = (0..events.len()).map(|_| AtomicU8::new(0)).collect();
    Ok(Plan {
        events,
        slots,
        state,
        next: AtomicUsize::new(0),
    })
}

/// What one connection saw in one phase.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    statuses: HashMap<u16, u64>,
    transport_errors: u64,
    reconnects: u64,
    duplicates_waited: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.reconnects += other.reconnects;
        self.duplicates_waited += other.duplicates_waited;
    }
}

/// A keep-alive HTTP/1.1 client connection, just enough for the ingress's answers.
struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    filled: usize,
}

struct Answer {
    status: u16,
    close: bool,
}

impl HttpConn {
    async fn open(addr: &str) -> io::Result<HttpConn> {
        let stream = TcpStream::connect(addr).await?;
        // Requests are one write each; Nagle would only add delay.
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            buf: vec![0; 4096],
            filled: 0,
        })
    }

    async fn exchange(&mut self, request: &[u8]) -> io::Result<Answer> {
        self.stream.write_all(request).await?;
        loop {
            if let Some((answer, used)) = parse_answer(&self.buf[..self.filled])? {
                self.buf.copy_within(used..self.filled, 0);
                self.filled -= used;
                return Ok(answer);
            }
            if self.filled == self.buf.len() {
                if self.buf.len() >= 1 << 20 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "answer > 1 MiB"));
                }
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = self.stream.read(&mut self.buf[self.filled..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.filled += n;
        }
    }
}

/// A complete answer at the start of `buf` and its length, or `None` if more bytes are needed.
fn parse_answer(buf: &[u8]) -> io::Result<Option<(Answer, usize)>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let Some(head_len) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| bad("non-UTF-8 head"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut length = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| bad("bad Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked answers are not supported"));
        }
    }
    let body_len = match (length, status) {
        (Some(n), _) => n,
        (None, 204 | 304) => 0,
        (None, _) => return Err(bad("answer without Content-Length")),
    };
    let total = head_len + 4 + body_len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((Answer { status, close }, total)))
}

/// Sends slots `[.., end)` from the shared cursor until none are left.
async fn drive(
    plan: Arc<Plan>,
    mut conn: Option<HttpConn>,
    addr: Arc<str>,
    end: usize,
    timeout: Duration,
) -> (Option<HttpConn>, Tally) {
    let mut tally = Tally::default();
    loop {
        let i = plan.next.fetch_add(1, Ordering::Relaxed);
        if i >= end {
            break;
        }
        let Slot { event, resend } = plan.slots[i];
        let event = event as usize;
        // A re-send goes out only after the original's answer (see the module comment).
        if resend && plan.state[event].load(Ordering::Acquire) == 0 {
            tally.duplicates_waited += 1;
            while plan.state[event].load(Ordering::Acquire) == 0 {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        let mut c = match conn.take() {
            Some(c) => c,
            None => match HttpConn::open(&addr).await {
                Ok(c) => {
                    tally.reconnects += 1;
                    c
                }
                Err(_) => {
                    tally.transport_errors += 1;
                    plan.state[event].fetch_or(ANSWERED, Ordering::Release);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let started = Instant::now();
        match tokio::time::timeout(timeout, c.exchange(&plan.events[event].request)).await {
            Ok(Ok(answer)) => {
                let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                tally.latencies_us.push(us);
                *tally.statuses.entry(answer.status).or_default() += 1;
                let acked = if answer.status == 200 { ACKED } else { 0 };
                plan.state[event].fetch_or(ANSWERED | acked, Ordering::Release);
                if !answer.close {
                    conn = Some(c);
                }
            }
            // A broken or timed-out exchange leaves the connection unusable: open a new one.
            Ok(Err(_)) | Err(_) => {
                tally.transport_errors += 1;
                plan.state[event].fetch_or(ANSWERED, Ordering::Release);
            }
        }
    }
    (conn, tally)
}

/// Runs slots `[start, end)` over the connections and hands the connections back.
async fn phase(
    plan: &Arc<Plan>,
    conns: Vec<Option<HttpConn>>,
    addr: &Arc<str>,
    (start, end): (usize, usize),
    timeout: Duration,
) -> anyhow::Result<(Vec<Option<HttpConn>>, Tally)> {
    // Each connection overshoots the cursor once when it runs out of slots.
    plan.next.store(start, Ordering::SeqCst);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(drive(plan.clone(), c, addr.clone(), end, timeout)))
        .collect();
    let mut back = Vec::with_capacity(tasks.len());
    let mut tally = Tally::default();
    for t in tasks {
        let (c, part) = t.await.context("connection task")?;
        back.push(c);
        tally.merge(part);
    }
    Ok((back, tally))
}

/// Utime + stime of a process, in seconds (all its threads).
fn proc_cpu_secs(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start with field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime / USER_HZ, stime / USER_HZ))
}

/// Jiffies of the whole machine (all CPUs together) and its CPU count.
#[derive(Clone, Copy)]
struct Machine {
    busy: u64,
    softirq: u64,
    /// Time the hypervisor gave this VM's CPUs to someone else.
    steal: u64,
    total: u64,
    cpus: usize,
}

fn machine_jiffies() -> Option<Machine> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut lines = stat.lines();
    let values: Vec<u64> = lines
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4)?;
    Some(Machine {
        busy: total - idle,
        softirq: *values.get(6)?,
        steal: *values.get(7)?,
        total,
        cpus: lines.filter(|l| l.starts_with("cpu")).count(),
    })
}

/// `INFO commandstats` and `INFO cpu` of the Redis server, for a before/after difference.
#[derive(Default)]
struct RedisStats {
    /// command → (calls, usec)
    commands: HashMap<String, (u64, u64)>,
    cpu_secs: f64,
}

async fn redis_stats(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<RedisStats> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .arg("cpu")
        .query_async(conn)
        .await?;
    let mut stats = RedisStats::default();
    for line in info.lines() {
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            let Some((name, fields)) = rest.split_once(':') else {
                continue;
            };
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            stats
                .commands
                .insert(name.to_owned(), (field("calls"), field("usec")));
        } else if let Some(v) = line
            .strip_prefix("used_cpu_user:")
            .or_else(|| line.strip_prefix("used_cpu_sys:"))
        {
            stats.cpu_secs += v.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(stats)
}

/// Resource use of the measured phase, for the breakdown on stderr.
struct Snapshot {
    own: Option<(f64, f64)>,
    ingress: Option<(f64, f64)>,
    machine: Option<Machine>,
    redis: Option<RedisStats>,
}

async fn snapshot(
    ingress_pid: Option<u32>,
    redis: Option<&mut redis::aio::MultiplexedConnection>,
) -> Snapshot {
    let redis = match redis {
        Some(conn) => redis_stats(conn).await.ok(),
        None => None,
    };
    Snapshot {
        own: proc_cpu_secs("self"),
        ingress: ingress_pid.and_then(|p| proc_cpu_secs(&p.to_string())),
        machine: machine_jiffies(),
        redis,
    }
}

fn report_breakdown(before: &Snapshot, after: &Snapshot, requests: usize, elapsed: Duration) {
    let per_req = |secs: f64| secs * 1e6 / requests.max(1) as f64;
    eprintln!(
        "breakdown of the measured phase ({requests} requests in {:.2} s):",
        elapsed.as_secs_f64()
    );
    // CPU seconds of everything we can attribute, to show what is left for "others".
    let mut attributed = 0.0;
    let mut machine_secs = None;
    if let (Some(b), Some(a)) = (before.machine, after.machine) {
        let share = (a.busy - b.busy) as f64 / (a.total - b.total).max(1) as f64;
        let busy_secs = share * a.cpus as f64 * elapsed.as_secs_f64();
        let softirq_share = (a.softirq - b.softirq) as f64 / (a.total - b.total).max(1) as f64;
        let softirq_secs = softirq_share * a.cpus as f64 * elapsed.as_secs_f64();
        let steal_share = (a.steal - b.steal) as f64 / (a.total - b.total).max(1) as f64;
        machine_secs = Some(busy_secs);
        eprintln!(
            "  machine    busy {:.0}% of {} cores = {:.1} µs of CPU per request (softirq {:.1}); steal {:.0}%",
            share * a.cpus as f64 * 100.0,
            a.cpus,
            per_req(busy_secs),
            per_req(softirq_secs),
            steal_share * a.cpus as f64 * 100.0
        );
    }
    if let (Some((bu, bs)), Some((au, as_))) = (before.ingress, after.ingress) {
        attributed += au - bu + as_ - bs;
        eprintln!(
            "  ingress    cpu {:.1} µs/request (user {:.1} + sys {:.1})",
            per_req(au - bu + as_ - bs),
            per_req(au - bu),
            per_req(as_ - bs)
        );
    }
    if let (Some((bu, bs)), Some((au, as_))) = (before.own, after.own) {
        attributed += au - bu + as_ - bs;
        eprintln!(
            "  generator  cpu {:.1} µs/request (user {:.1} + sys {:.1})",
            per_req(au - bu + as_ - bs),
            per_req(au - bu),
            per_req(as_ - bs)
        );
    }
    if let (Some(b), Some(a)) = (&before.redis, &after.redis) {
        attributed += a.cpu_secs - b.cpu_secs;
        eprintln!(
            "  redis      cpu {:.1} µs/request (server used_cpu_user+sys, I/O included)",
            per_req(a.cpu_secs - b.cpu_secs)
        );
    }
    if let Some(busy) = machine_secs {
        eprintln!(
            "  others     {:.1} µs/request (machine busy minus the above: other processes, kernel work charged to no process)",
            per_req((busy - attributed).max(0.0))
        );
    }
    if let (Some(b), Some(a)) = (&before.redis, &after.redis) {
        let mut rows: Vec<(&String, u64, u64)> = a
            .commands
            .iter()
            .filter_map(|(name, &(calls, usec))| {
                let (c0, u0) = b.commands.get(name).copied().unwrap_or((0, 0));
                (calls > c0 && name != "info").then_some((name, calls - c0, usec - u0))
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.2));
        for (name, calls, usec) in rows {
            eprintln!(
                "  redis cmd  {name:<8} calls={calls:<8} usec_per_call={:.2} per_request_us={:.2}",
                usec as f64 / calls as f64,
                usec as f64 / requests.max(1) as f64
            );
        }
        eprintln!(
            "             (commands run by the apalis push script are also counted inside evalsha)"
        );
    }
}

/// The fields of an `InboundEventV1` job the check needs.
#[derive(Deserialize)]
struct JobKey<'a> {
    #[serde(borrow)]
    merchant_id: Cow<'a, str>,
    #[serde(borrow)]
    instagram_account_id: Cow<'a, str>,
    #[serde(borrow)]
    event_id: Cow<'a, str>,
}

/// Jobs counted per `(merchant_id, event_id)`, and each account's merchant as the jobs say.
struct Jobs {
    per_event: HashMap<(String, String), u32>,
    account_merchants: HashMap<String, HashSet<String>>,
    unreadable: u64,
}

async fn read_jobs(url: &str, wanted: &HashSet<&str>) -> anyhow::Result<Jobs> {
    let (mut conn, mut jobs) = jobs_reader(url).await?;
    // HSCAN may return a field twice: count each task id once.
    let mut seen_tasks: HashSet<Vec<u8>> = HashSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, flat): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
            .arg(JOB_HASH)
            .arg(cursor)
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await
            .context("HSCAN inbound_event:data")?;
        for pair in flat.chunks_exact(2) {
            if !seen_tasks.insert(pair[0].clone()) {
                continue;
            }
            tally(&mut jobs, &pair[1], wanted);
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(jobs)
}

/// A connection to `--redis-url` and an empty count, for `read_jobs` and `read_job_list`.
async fn jobs_reader(url: &str) -> anyhow::Result<(redis::aio::MultiplexedConnection, Jobs)> {
    let client = redis::Client::open(url).context("--redis-url")?;
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .context("connect to --redis-url")?;
    let jobs = Jobs {
        per_event: HashMap::new(),
        account_merchants: HashMap::new(),
        unreadable: 0,
    };
    Ok((conn, jobs))
}

/// Counts one job: what `read_jobs` and `read_job_list` share.
fn tally(jobs: &mut Jobs, raw: &[u8], wanted: &HashSet<&str>) {
    let Ok(job) = serde_json::from_slice::<JobKey<'_>>(raw) else {
        jobs.unreadable += 1;
        return;
    };
    if !wanted.contains(job.event_id.as_ref()) {
        return;
    }
    jobs.account_merchants
        .entry(job.instagram_account_id.into_owned())
        .or_default()
        .insert(job.merchant_id.to_string());
    *jobs
        .per_event
        .entry((job.merchant_id.into_owned(), job.event_id.into_owned()))
        .or_default() += 1;
}

/// The jobs of a Redis list, read in chunks.
async fn read_job_list(url: &str, list: &str, wanted: &HashSet<&str>) -> anyhow::Result<Jobs> {
    let (mut conn, mut jobs) = jobs_reader(url).await?;
    let mut start = 0i64;
    loop {
        let chunk: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(list)
            .arg(start)
            .arg(start + 4999)
            .query_async(&mut conn)
            .await
            .context("LRANGE --job-list")?;
        if chunk.is_empty() {
            break;
        }
        start += chunk.len() as i64;
        for raw in &chunk {
            tally(&mut jobs, raw, wanted);
        }
    }
    Ok(jobs)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let url = args.url.clone().unwrap_or_default();
    let target = parse_url(&url)?;
    let accounts = parse_accounts(args.accounts.as_deref().unwrap_or_default())?;
    if accounts.len() < 20 {
        eprintln!(
            "note: only {} accounts; the benchmark is meant to spread over at least 20",
            accounts.len()
        );
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let built = Instant::now();
    let plan = Arc::new(build_plan(&args, &target, &accounts)?);
    eprintln!(
        "built {} signed requests for {} distinct events over {} accounts in {:.1} s",
        plan.slots.len(),
        plan.events.len(),
        accounts.len(),
        built.elapsed().as_secs_f64()
    );
    let addr: Arc<str> = Arc::from(target.addr.as_str());
    let mut conns = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        conns.push(Some(
            HttpConn::open(&addr)
                .await
                .with_context(|| format!("connect to {}", target.addr))?,
        ));
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut stats_conn = match &args.redis_url {
        Some(u) => Some(
            redis::Client::open(u.as_str())
                .context("--redis-url")?
                .get_multiplexed_async_connection()
                .await
                .context("connect to --redis-url")?,
        ),
        None => None,
    };

    // Other work on the machine skews every figure: say so up front.
    if let Some(b) = machine_jiffies() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(a) = machine_jiffies() {
            let busy = (a.busy - b.busy) as f64 / (a.total - b.total).max(1) as f64;
            if busy > 0.10 {
                eprintln!(
                    "warning: the machine is already {:.0}% busy before the benchmark; figures will be low",
                    busy * 100.0
                );
            }
        }
    }
    let (conns, warm) = phase(&plan, conns, &addr, (0, args.warmup), timeout).await?;
    if args.warmup > 0 {
        eprintln!(
            "warm-up: {} requests, {} not 200",
            args.warmup,
            args.warmup as u64 - warm.statuses.get(&200).copied().unwrap_or(0)
        );
    }

    let before = snapshot(args.ingress_pid, stats_conn.as_mut()).await;
    let started = Instant::now();
    let (_conns, mut tally) = phase(
        &plan,
        conns,
        &addr,
        (args.warmup, plan.slots.len()),
        timeout,
    )
    .await?;
    let elapsed = started.elapsed();
    let after = snapshot(args.ingress_pid, stats_conn.as_mut()).await;
    if let Some(pid) = args.ingress_pid {
        // Memory under load: the resident set now and its peak (VmHWM) since start.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let (Some(rss), Some(peak)) = (kb("VmRSS:"), kb("VmHWM:")) {
            eprintln!(
                "ingress memory: rss_mb={:.1} peak_rss_mb={:.1}",
                rss as f64 / 1024.0,
                peak as f64 / 1024.0
            );
        }
    }

    let mut latencies = std::mem::take(&mut tally.latencies_us);
    latencies.sort_unstable();
    let ok = tally.statuses.get(&200).copied().unwrap_or(0);
    let non2xx = tally
        .statuses
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(_, n)| n)
        .sum::<u64>()
        + tally.transport_errors;
    let measured_events: HashSet<u32> = plan.slots[args.warmup..].iter().map(|s| s.event).collect();
    let rps = args.requests as f64 / elapsed.as_secs_f64().max(1e-9);

    let mut line = format!(
        "requests={} rps={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} non2xx={non2xx} distinct_events={}",
        args.requests,
        rps,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        measured_events.len()
    );
    let mut lost = 0u64;
    if let Some(redis_url) = &args.redis_url {
        let wanted: HashSet<&str> = plan.events.iter().map(|e| e.event_id.as_str()).collect();
        let jobs = match &args.job_list {
            Some(list) => read_job_list(redis_url, list, &wanted).await?,
            None => read_jobs(redis_url, &wanted).await?,
        };
        let merchant_of = |account: &Account| -> Option<String> {
            if let Some(m) = &account.merchant {
                return Some(m.clone());
            }
            let seen = jobs.account_merchants.get(&account.id)?;
            // An account whose jobs name two merchants is misrouted: expect none of them.
            (seen.len() == 1)
                .then(|| seen.iter().next().cloned())
                .flatten()
        };
        let merchants: Vec<Option<String>> = accounts.iter().map(merchant_of).collect();
        let mut measured_jobs = 0u64;
        let mut duplicate_jobs = 0u64;
        for (k, event) in plan.events.iter().enumerate() {
            let count = merchants[event.account]
                .as_ref()
                .and_then(|m| jobs.per_event.get(&(m.clone(), event.event_id.clone())))
                .copied()
                .unwrap_or(0);
            if measured_events.contains(&(k as u32)) {
                measured_jobs += u64::from(count);
            }
            duplicate_jobs += u64::from(count.saturating_sub(1));
            if plan.state[k].load(Ordering::Acquire) & ACKED != 0 && count != 1 {
                lost += 1;
            }
        }
        let all_jobs: u64 = jobs.per_event.values().map(|&n| u64::from(n)).sum();
        let misrouted = jobs
            .account_merchants
            .iter()
            .filter(|(account, seen)| {
                seen.len() > 1
                    || accounts.iter().any(|a| {
                        &a.id == *account && a.merchant.as_ref().is_some_and(|m| !seen.contains(m))
                    })
            })
            .count();
        line.push_str(&format!(
            " jobs={measured_jobs} lost={lost} duplicate_jobs={duplicate_jobs}"
        ));
        eprintln!(
            "jobs of this run in {JOB_HASH}: {all_jobs} (warm-up included); unreadable jobs: {}; accounts routed to an unexpected merchant: {misrouted}",
            jobs.unreadable
        );
    }
    println!("{line}");

    let mut statuses: Vec<_> = tally.statuses.iter().collect();
    statuses.sort();
    eprintln!(
        "statuses: {}; transport errors: {}; reconnects: {}; duplicates that waited for their original: {}; 200s: {ok}",
        statuses
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect::<Vec<_>>()
            .join(" "),
        tally.transport_errors,
        tally.reconnects,
        tally.duplicates_waited
    );
    eprintln!(
        "latency ms: p90={:.2} p99.9={:.2}",
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.999)
    );
    report_breakdown(&before, &after, args.requests, elapsed);
    Ok(if lost > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
