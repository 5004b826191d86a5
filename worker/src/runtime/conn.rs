//! The Redis connection apalis-redis uses for a queue, with two fixes.
//!
//! 1. apalis-redis 1.0's fetch script moves *every* due job from `{q}:scheduled` to `{q}:active`
//!    with one `RPUSH … unpack(ids)`, and Lua's `unpack` fails at about 8,000 values: after an
//!    outage with a backlog that size, every fetch errors and the queue stalls for good. This
//!    wrapper recognises the fetch (by its keys) and first moves due jobs over in chunks of at
//!    most 1,000, doing for them exactly what the fetch would.
//! 2. Any Redis error in a worker's heartbeat, fetch or ack kills that worker, and its running
//!    jobs would then run a second time elsewhere. Here every call is retried in place, with
//!    backoff, for up to `WORKER_REDIS_RETRY_SECS`, in a way that is safe for what the call does:
//!    - a fetch whose reply was lost may have moved jobs into our in-flight set that apalis
//!      never got: before the next fetches, those are put back at the head of the queue;
//!    - an ack whose reply was lost may have run: acks are repeated one task at a time and a task
//!      already acked counts as acked;
//!    - "worker not registered" (Redis lost its data) registers the worker again;
//!    - for one orphan timeout after a fault, other workers are not judged dead: their
//!      heartbeats were held up by the same outage as ours.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apalis_redis::Config;
use igsales_jobs::RedisConn;
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

const CHUNK: usize = 1000;

/// KEYS: scheduled zset, active list, signal list. ARGV: now (s), chunk size.
const MOVE_DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due == 0 then return 0 end
redis.call('RPUSH', KEYS[2], unpack(due))
redis.call('ZREM', KEYS[1], unpack(due))
redis.call('DEL', KEYS[3])
redis.call('LPUSH', KEYS[3], 1)
return #due
";

/// KEYS: this worker's in-flight set, active list, signal list. ARGV: the task ids apalis holds.
/// Every other id in the in-flight set came from a fetch whose reply was lost: put it back first
/// in line.
const RECLAIM: &str = r"
local held = {}
for i = 1, #ARGV do held[ARGV[i]] = true end
local lost = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not held[id] then
    redis.call('SREM', KEYS[1], id)
    redis.call('LPUSH', KEYS[2], id)
    lost = lost + 1
  end
end
if lost > 0 then
  redis.call('DEL', KEYS[3])
  redis.call('LPUSH', KEYS[3], 1)
end
return lost
";

struct Keys {
    workers: String,
    active: String,
    scheduled: String,
    signal: String,
    inflight_prefix: String,
    done: String,
}

impl Keys {
    fn new(config: &Config) -> Self {
        Keys {
            workers: config.workers_set(),
            active: config.active_jobs_list(),
            scheduled: config.scheduled_jobs_set(),
            signal: config.signal_list(),
            inflight_prefix: config.inflight_jobs_set(),
            done: config.done_jobs_set(),
        }
    }

    /// apalis's scripts are `EVALSHA sha numkeys keys… args…` (or `EVAL` after a restart).
    fn call(&self, a: &[&[u8]]) -> Call {
        let (Some(name), Some(numkeys)) = (a.first(), a.get(2)) else {
            return Call::Other;
        };
        if !(name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL")) {
            return Call::Other;
        }
        let key = |i: usize| a.get(3 + i).copied().unwrap_or_default();
        let argc = a.len().saturating_sub(3);
        match *numkeys {
            b"7" if key(0) == self.workers.as_bytes() && key(1) == self.active.as_bytes() => {
                Call::Fetch
            }
            b"1" if key(0) == self.workers.as_bytes() => Call::KeepAlive,
            b"2" if key(0) == self.workers.as_bytes() => Call::Register,
            // Four keys and one argument (the cut-off) reaps every stale worker; with a second
            // (a name) it is the registration's look at one worker only.
            b"4" if key(0) == self.workers.as_bytes()
                && key(3) == self.inflight_prefix.as_bytes()
                && argc == 5 =>
            {
                Call::ReapOthers
            }
            b"5" if key(1) == self.done.as_bytes() => Call::Ack,
            b"5" if key(1) == self.active.as_bytes() => Call::Release,
            _ => Call::Other,
        }
    }
}

/// What the retries know, shared by every clone of one queue's connection.
struct Ledger {
    /// Task ids apalis got from our fetches and has not acked yet.
    held: Mutex<HashSet<String>>,
    /// Until when a fetch whose reply was lost may still land (a stalled server runs it late).
    reclaim_until: Mutex<Option<Instant>>,
    /// This worker's in-flight set, learnt from its fetch.
    inflight: Mutex<Option<String>>,
}

/// Process-wide: when a Redis call last failed. Shared by every queue, so a fault seen by one
/// worker holds back every worker's judgement of the others.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<Option<Instant>>>);

impl Faults {
    fn record(&self) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(Instant::now());
        }
    }

    fn within(&self, window: Duration) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|last| *last)
            .is_some_and(|t| t.elapsed() < window)
    }
}

#[derive(Clone, Copy)]
pub struct Retry {
    /// Total time one call is retried for.
    pub budget: Duration,
    /// Other workers are not reaped this long after a fault.
    pub orphan_timeout: Duration,
}

#[derive(Clone)]
pub struct QueueConn {
    inner: RedisConn,
    keys: Arc<Keys>,
    mover: Arc<redis::Script>,
    reclaimer: Arc<redis::Script>,
    ledger: Arc<Ledger>,
    faults: Faults,
    retry: Retry,
}

/// Which apalis call a command is, told apart by its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Fetch,
    KeepAlive,
    Register,
    /// `reenqueue_orphaned` for every stale worker (not the one-name form at registration).
    ReapOthers,
    Ack,
    Release,
    Other,
}

/// How a failed call went.
#[derive(Debug, PartialEq, Eq)]
enum Fault {
    /// Never reached Redis, or Redis refused it without running it: repeat as it is.
    NotRun,
    /// Sent, but the reply was lost: it may have run.
    MaybeRan,
    /// Redis has no record of this worker (it lost its data).
    NotRegistered,
    /// The ack names a task no longer in our in-flight set (acked by a lost reply).
    NotInFlight,
    /// A repeated registration found the first one.
    AlreadyRegistered,
    /// Anything else: passed to apalis as it is.
    Final,
}

fn classify_error(e: &RedisError) -> Fault {
    if e.is_connection_refusal() {
        return Fault::NotRun;
    }
    if e.is_timeout() || e.is_io_error() || e.is_connection_dropped() {
        return Fault::MaybeRan;
    }
    let text = e.to_string();
    if text.contains("worker not registered") {
        return Fault::NotRegistered;
    }
    if text.contains("task not executed by worker") {
        return Fault::NotInFlight;
    }
    if text.contains("worker is still active within threshold") {
        return Fault::AlreadyRegistered;
    }
    // Refused before running: loading after a restart, a script hogging the server, a replica
    // during failover.
    if igsales_jobs::redis_conn::refused_for_now(e) {
        return Fault::NotRun;
    }
    Fault::Final
}

/// Server errors come back as values from the connection: make them errors to classify.
fn outcome(r: RedisResult<Value>) -> RedisResult<Value> {
    match r {
        Ok(Value::ServerError(e)) => Err(e.into()),
        other => other,
    }
}

fn args(cmd: &Cmd) -> Vec<&[u8]> {
    cmd.args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(b) => Some(b),
            _ => None,
        })
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The task ids a fetch returned: `{results, meta}`, each meta entry led by its id.
fn fetched_ids(v: &Value) -> Vec<String> {
    let Value::Array(parts) = v else {
        return Vec::new();
    };
    let Some(Value::Array(meta)) = parts.get(1) else {
        return Vec::new();
    };
    meta.iter()
        .filter_map(|m| match m {
            Value::Array(fields) => match fields.first() {
                Some(Value::BulkString(id)) => Some(text(id)),
                Some(Value::SimpleString(id)) => Some(id.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Per-task argument groups of an ack: after the 5 keys and the emit flag, 5 values per task.
const ACK_KEYS: usize = 5;
const ACK_GROUP: usize = 5;

impl QueueConn {
    pub fn new(inner: RedisConn, config: &Config, faults: Faults, retry: Retry) -> Self {
        QueueConn {
            inner,
            keys: Arc::new(Keys::new(config)),
            mover: Arc::new(redis::Script::new(MOVE_DUE)),
            reclaimer: Arc::new(redis::Script::new(RECLAIM)),
            ledger: Arc::new(Ledger {
                held: Mutex::new(HashSet::new()),
                reclaim_until: Mutex::new(None),
                inflight: Mutex::new(None),
            }),
            faults,
            retry,
        }
    }

    async fn move_due(&mut self) -> RedisResult<()> {
        let now = now_secs();
        loop {
            let moved: usize = self
                .mover
                .key(&self.keys.scheduled)
                .key(&self.keys.active)
                .key(&self.keys.signal)
                .arg(now)
                .arg(CHUNK)
                .invoke_async(&mut self.inner)
                .await?;
            if moved < CHUNK {
                return Ok(());
            }
        }
    }

    /// Puts back jobs a lost fetch reply left in our in-flight set, while one may still land.
    async fn reclaim(&mut self) -> RedisResult<()> {
        let due = self
            .ledger
            .reclaim_until
            .lock()
            .ok()
            .and_then(|u| *u)
            .is_some_and(|u| Instant::now() < u);
        let inflight = self.ledger.inflight.lock().ok().and_then(|i| i.clone());
        let (true, Some(inflight)) = (due, inflight) else {
            return Ok(());
        };
        let held: Vec<String> = self
            .ledger
            .held
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default();
        let mut invocation = self.reclaimer.key(&inflight);
        invocation.key(&self.keys.active).key(&self.keys.signal);
        for id in &held {
            invocation.arg(id);
        }
        let lost: usize = invocation.invoke_async(&mut self.inner).await?;
        if lost > 0 {
            tracing::warn!(
                queue.active = %self.keys.active,
                jobs = lost,
                "put back jobs a lost fetch reply had taken"
            );
        }
        Ok(())
    }

    /// Tasks apalis no longer holds (acked or handed back).
    fn forget<'b>(&self, ids: impl Iterator<Item = &'b [u8]>) {
        if let Ok(mut held) = self.ledger.held.lock() {
            for id in ids {
                held.remove(&text(id));
            }
        }
    }

    async fn register_again(&mut self, worker: &[u8]) -> RedisResult<()> {
        tracing::warn!(worker = %text(worker), "Redis lost this worker's registration; registering it again");
        redis::cmd("ZADD")
            .arg(&self.keys.workers)
            .arg(now_secs())
            .arg(worker)
            .query_async::<i64>(&mut self.inner)
            .await
            .map(|_| ())
    }

    /// Acks task by task; a task that is no longer ours (its ack already ran) counts as done.
    async fn ack_each(&mut self, a: &[&[u8]]) -> RedisResult<Value> {
        let head = 3 + ACK_KEYS + 1;
        let Some(groups) = a.get(head..) else {
            return Ok(Value::Int(0));
        };
        let mut acked = 0;
        for group in groups.chunks(ACK_GROUP) {
            let mut one = redis::cmd(&text(a[0]));
            for arg in &a[1..head] {
                one.arg(*arg);
            }
            for arg in group {
                one.arg(*arg);
            }
            match self.with_retries(Call::Other, &one).await {
                Ok(_) => acked += 1,
                Err(e) if classify_error(&e) == Fault::NotInFlight => {}
                Err(e) => return Err(e),
            }
            self.forget(group.first().into_iter().copied());
        }
        Ok(Value::Int(acked))
    }

    /// Runs one command, repeating it through faults for up to the retry budget.
    async fn with_retries(&mut self, call: Call, cmd: &Cmd) -> RedisResult<Value> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        let mut repeated = false;
        loop {
            let result = match call {
                // Lost jobs back first, then the chunked move (so the fetch's own move stays
                // small), then the fetch; each is safe to repeat.
                Call::Fetch => match self.reclaim().await {
                    Ok(()) => match self.move_due().await {
                        Ok(()) => outcome(self.inner.req_packed_command(cmd).await),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                },
                _ => outcome(self.inner.req_packed_command(cmd).await),
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let fault = classify_error(&err);
            if fault != Fault::Final {
                self.faults.record();
            }
            match (&fault, call) {
                (Fault::AlreadyRegistered, Call::Register) if repeated => return Ok(Value::Nil),
                (Fault::NotRegistered, Call::KeepAlive | Call::Fetch) => {
                    let a = args(cmd);
                    let worker = if call == Call::Fetch {
                        a.get(3 + 7 + 2)
                    } else {
                        a.get(3 + 1 + 1)
                    };
                    if let Some(worker) = worker {
                        let worker = worker.to_vec();
                        if self.register_again(&worker).await.is_ok() {
                            continue;
                        }
                    }
                }
                (Fault::MaybeRan, Call::Fetch) => {
                    if let Ok(mut until) = self.ledger.reclaim_until.lock() {
                        *until =
                            Some(Instant::now() + self.retry.budget.max(Duration::from_secs(30)));
                    }
                }
                (Fault::NotRun | Fault::MaybeRan, _) => {}
                _ => return Err(err),
            }
            if started.elapsed() + pause > self.retry.budget {
                tracing::error!(error = %igsales_jobs::redis_conn::describe(&err), "Redis stayed unavailable past WORKER_REDIS_RETRY_SECS");
                return Err(err);
            }
            tracing::warn!(error = %igsales_jobs::redis_conn::describe(&err), retry_in = ?pause, "a queue's Redis call failed; repeating it");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
            repeated = true;
        }
    }

    async fn run(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let a = args(cmd);
        let call = self.keys.call(&a);
        match call {
            Call::Fetch => {
                if let (Some(inflight), Ok(mut known)) = (a.get(3 + 2), self.ledger.inflight.lock())
                {
                    *known = Some(text(inflight));
                }
                let v = self.with_retries(call, cmd).await?;
                let ids = fetched_ids(&v);
                if !ids.is_empty()
                    && let Ok(mut held) = self.ledger.held.lock()
                {
                    held.extend(ids);
                }
                Ok(v)
            }
            Call::ReapOthers if self.faults.within(self.retry.orphan_timeout) => {
                // Others' heartbeats were held up by the fault too: judge them a little later.
                Ok(Value::Int(0))
            }
            Call::Ack => match self.with_retries(call, cmd).await {
                Ok(v) => {
                    let groups = a.get(3 + ACK_KEYS + 1..).unwrap_or_default();
                    self.forget(groups.chunks(ACK_GROUP).filter_map(|g| g.first().copied()));
                    Ok(v)
                }
                Err(e) if classify_error(&e) == Fault::NotInFlight => self.ack_each(&a).await,
                Err(e) => Err(e),
            },
            Call::Release => {
                let v = self.with_retries(call, cmd).await?;
                match a.get(3 + 5 + 2..) {
                    // No ids: every task this worker held went back.
                    Some([]) | None => {
                        if let Ok(mut held) = self.ledger.held.lock() {
                            held.clear();
                        }
                    }
                    Some(ids) => self.forget(ids.iter().copied()),
                }
                Ok(v)
            }
            _ => self.with_retries(call, cmd).await,
        }
    }
}

impl ConnectionLike for QueueConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.run(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-1s of the apalis-redis scripts `Keys::call` recognises (its `lua/*.lua`), as
    /// apalis-redis 1.0.0 sends them.
    const FETCH_NEXT: &str = "f053fd9b41b61a2d32b8b7d8dba3f1a96e3aa6e1";
    const REGISTER_WORKER: &str = "0d5fbce91e1dcff1121ece41f7169da3c0e39194";
    const KEEP_ALIVE: &str = "5c1d697dfa0d68de2954ceefa235f87162ecc839";
    const REENQUEUE_ORPHANED: &str = "6b6f3808de063cd4ca38e9e11b6968a6cc826069";

    /// Answers every command with 0 and keeps its arguments: what apalis-redis sends, without
    /// a server.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<Vec<u8>>>>>);

    impl ConnectionLike for Recorder {
        fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
            let sent = args(cmd).into_iter().map(<[u8]>::to_vec).collect();
            self.0.lock().expect("recorder").push(sent);
            Box::pin(async { Ok(Value::Int(0)) })
        }

        fn req_packed_commands<'a>(
            &'a mut self,
            _pipeline: &'a Pipeline,
            _offset: usize,
            _count: usize,
        ) -> RedisFuture<'a, Vec<Value>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn get_db(&self) -> i64 {
            0
        }
    }

    /// An upgrade of apalis-redis that changes a script (its text, keys or arguments) fails
    /// here. Whoever upgrades: re-read the new `lua/*.lua` and `src/queries/*.rs`, then check
    /// `Keys::call` (key counts and order), the argument positions `QueueConn::run` and
    /// `with_retries` read (in-flight set, worker name, ack groups, release ids), that
    /// MOVE_DUE still does for due jobs what `fetch_next.lua` does, and that RECLAIM matches
    /// how the fetch fills the in-flight set; then record the new SHA-1s here and the new
    /// `=` versions in the workspace Cargo.toml.
    #[tokio::test]
    async fn apalis_redis_sends_the_scripts_this_wrapper_recognises() {
        use apalis::prelude::{Backend, WorkerContext};

        let config = Config::default()
            .queue("canary")
            .heartbeat_interval(Duration::from_millis(10))
            .lock_tasks(false);
        let worker = WorkerContext::new("canary-test-1-0");
        let recorder = Recorder::default();
        let mut storage: apalis_redis::RedisStorage<(), Recorder> =
            apalis_redis::RedisStorage::new(recorder.clone()).with_config(config.clone());
        // Registration, then (the heartbeat being due at once) a heartbeat, then a fetch.
        futures::future::poll_fn(|cx| storage.poll_ready(cx, &worker))
            .await
            .expect("registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
        futures::future::poll_fn(|cx| storage.poll_ready(cx, &worker))
            .await
            .expect("heartbeat");
        // The recorder's 0 is no fetch reply: only the command sent matters here.
        let _ = apalis_redis::queries::fetch_next(&mut recorder.clone(), &worker, &config).await;

        let keys = Keys::new(&config);
        let sent = recorder.0.lock().expect("recorder").clone();
        let scripts: Vec<(Call, String)> = sent
            .iter()
            .map(|a| a.iter().map(Vec::as_slice).collect::<Vec<&[u8]>>())
            .filter(|a| a.first() == Some(&b"EVALSHA".as_slice()))
            .map(|a| (keys.call(&a), text(a[1])))
            .collect();
        let upgrade = "apalis-redis's scripts changed: see this test's doc comment";
        assert_eq!(
            scripts,
            [
                // The registration's look at this worker's own name, which is left alone.
                (Call::Other, REENQUEUE_ORPHANED.to_owned()),
                (Call::Register, REGISTER_WORKER.to_owned()),
                (Call::KeepAlive, KEEP_ALIVE.to_owned()),
                (Call::ReapOthers, REENQUEUE_ORPHANED.to_owned()),
                (Call::Fetch, FETCH_NEXT.to_owned()),
            ],
            "{upgrade}"
        );

        // The arguments the wrapper reads, where it reads them.
        let name = worker.name().as_bytes();
        let keep_alive = sent
            .iter()
            .find(|a| a.get(1).map(Vec::as_slice) == Some(KEEP_ALIVE.as_bytes()));
        let keep_alive = keep_alive.expect("a keep-alive");
        assert_eq!(
            keep_alive.get(3 + 1 + 1).map(Vec::as_slice),
            Some(name),
            "{upgrade}"
        );
        let fetch = sent.last().expect("the fetch");
        let inflight = config.inflight_set_for(&worker);
        assert_eq!(
            fetch.get(3 + 2).map(Vec::as_slice),
            Some(inflight.as_bytes()),
            "{upgrade}"
        );
        assert_eq!(
            fetch.get(3 + 7 + 2).map(Vec::as_slice),
            Some(name),
            "{upgrade}"
        );
        assert_eq!(
            fetch.get(3 + 6).map(Vec::as_slice),
            Some(config.scheduled_jobs_set().as_bytes()),
            "{upgrade}"
        );
    }

    #[test]
    fn lost_replies_may_have_run_refusals_did_not() {
        let refused: RedisError =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into();
        assert_eq!(classify_error(&refused), Fault::NotRun);
        let timeout: RedisError =
            std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out").into();
        assert_eq!(classify_error(&timeout), Fault::MaybeRan);
        let reset: RedisError =
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset").into();
        assert_eq!(classify_error(&reset), Fault::MaybeRan);
    }

    #[test]
    fn a_fetch_reply_yields_its_task_ids() {
        let reply = Value::Array(vec![
            Value::Array(vec![Value::BulkString(b"{}".to_vec())]),
            Value::Array(vec![Value::Array(vec![
                Value::BulkString(b"01JTASK".to_vec()),
                Value::BulkString(b"attempts".to_vec()),
                Value::BulkString(b"0".to_vec()),
            ])]),
        ]);
        assert_eq!(fetched_ids(&reply), ["01JTASK"]);
        assert!(fetched_ids(&Value::Array(vec![])).is_empty());
    }
}
