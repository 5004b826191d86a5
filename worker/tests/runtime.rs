//! `worker run` as a real process against real Redis and Postgres, driven with canary jobs.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use igsales_jobs::{CanaryFailure, CanaryV1, DeadLetter, JobQueue};
use igsales_tests::cli::{key_entry, run};
use igsales_tests::process::{Process, free_port};
use igsales_tests::worker_env::{self, Env, with};
use igsales_tests::{PrivateRedis, TestDb, TestRedis};
use redis::AsyncCommands;

const BIN: &str = env!("CARGO_BIN_EXE_worker");

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The shared test settings, against no Graph or model API (canaries call neither).
fn env(db: &TestDb, redis_url: &str) -> Env {
    worker_env::fast(
        db.app_url(),
        redis_url.to_owned(),
        "http://127.0.0.1:9".into(),
        "http://127.0.0.1:9/v1".into(),
    )
}

fn start_worker(env: &[(&'static str, String)]) -> Process {
    worker_env::start(BIN, env)
}

async fn connection(url: &str) -> igsales_jobs::RedisConn {
    igsales_tests::redis::manager(url).await
}

async fn push(url: &str, canary: CanaryV1) {
    JobQueue::<CanaryV1>::new(connection(url).await)
        .push(canary)
        .await
        .expect("push canary");
}

fn canary(id: &str) -> CanaryV1 {
    CanaryV1 {
        id: id.into(),
        pushed_ms: now_ms(),
        ..CanaryV1::default()
    }
}

async fn runs(url: &str, id: &str) -> u32 {
    let mut c = connection(url).await;
    c.get::<_, Option<u32>>(format!("canary:{id}:runs"))
        .await
        .expect("runs")
        .unwrap_or(0)
}

async fn started_ms(url: &str, id: &str) -> Vec<i64> {
    let mut c = connection(url).await;
    c.lrange(format!("canary:{id}:started_ms"), 0, -1)
        .await
        .expect("starts")
}

/// Polls until `runs(id) >= n` or the deadline; returns the count seen.
async fn wait_runs(url: &str, id: &str, n: u32, within: Duration) -> u32 {
    let deadline = Instant::now() + within;
    loop {
        let r = runs(url, id).await;
        if r >= n || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn dead_letters(url: &str) -> Vec<DeadLetter> {
    let mut c = connection(url).await;
    let raws: Vec<String> = c.lrange("dlq:canary", 0, -1).await.expect("dlq");
    raws.iter()
        .map(|r| serde_json::from_str(r).expect("record"))
        .collect()
}

/// Jobs of the canary queue apalis considers finished successfully.
async fn done_count(url: &str) -> usize {
    let mut c = connection(url).await;
    c.scard("canary:done").await.expect("done")
}

/// A worker environment whose Redis is reached through a proxy the test can stall or deafen,
/// with short Redis timeouts and in-place retries, and no restarts (a worker that dies at all
/// stops its process: the test sees it).
async fn through_a_proxy(
    db: &TestDb,
    private: &PrivateRedis,
    extra: &[(&'static str, &str)],
) -> (igsales_tests::proxy::Proxy, Env) {
    let proxy =
        igsales_tests::proxy::Proxy::start(igsales_tests::proxy::target(&private.url())).await;
    let url = igsales_tests::proxy::through(&private.url(), proxy.addr());
    let mut e = env(db, &url);
    for (k, v) in [
        ("REDIS_RESPONSE_TIMEOUT_MS", "300"),
        ("WORKER_MAX_RESTARTS", "0"),
        ("WORKER_REDIS_RETRY_SECS", "30"),
    ]
    .iter()
    .chain(extra)
    {
        e = with(&e, k, v);
    }
    (proxy, e)
}

/// Waits until `n` canaries are acked.
async fn wait_done(url: &str, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let done = done_count(url).await;
        if done >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{done} of {n} done");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_worker_picks_up_a_pushed_job_within_half_a_second() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let _w = start_worker(&env(&db, &redis.url()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::new();
    for i in 0..5 {
        let id = format!("pickup-{i}");
        let c = canary(&id);
        let pushed = c.pushed_ms;
        push(&redis.url(), c).await;
        assert_eq!(
            wait_runs(&redis.url(), &id, 1, Duration::from_secs(5)).await,
            1
        );
        latencies.push(started_ms(&redis.url(), &id).await[0] - pushed);
    }
    latencies.sort_unstable();
    eprintln!("pickup latencies (ms): {latencies:?}");
    // The benchmark measures the real distribution; here a generous bound on the median.
    assert!(latencies[2] <= 500, "pickup latencies (ms): {latencies:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_exhaustion_permanent_failures_and_waits_follow_the_policy() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let url = redis.url();
    let _w = start_worker(&with(&env(&db, &url), "WORKER_CONCURRENCY", "1"));

    // Fails twice, then succeeds: three runs, done, no dead letter.
    push(
        &url,
        CanaryV1 {
            fail_first: 2,
            ..canary("twice")
        },
    )
    .await;
    assert_eq!(
        wait_runs(&url, "twice", 3, Duration::from_secs(10)).await,
        3
    );

    // Always fails: exactly JOB_MAX_ATTEMPTS (3) runs and one record with every field.
    push(
        &url,
        CanaryV1 {
            fail_first: 1000,
            ..canary("always")
        },
    )
    .await;
    assert_eq!(
        wait_runs(&url, "always", 3, Duration::from_secs(10)).await,
        3
    );

    // Permanent: one run.
    push(
        &url,
        CanaryV1 {
            fail_first: 1000,
            fail_as: CanaryFailure::Permanent,
            ..canary("perm")
        },
    )
    .await;
    assert_eq!(wait_runs(&url, "perm", 1, Duration::from_secs(10)).await, 1);

    let deadline = Instant::now() + Duration::from_secs(5);
    let letters = loop {
        let l = dead_letters(&url).await;
        if l.len() >= 2 || Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs(&url, "twice").await, 3, "no run after success");
    assert_eq!(
        runs(&url, "always").await,
        3,
        "no run beyond JOB_MAX_ATTEMPTS"
    );
    assert_eq!(runs(&url, "perm").await, 1, "a permanent failure runs once");
    assert_eq!(letters.len(), 2, "{letters:?}");
    let always = letters
        .iter()
        .find(|l| l.payload["id"] == "always")
        .expect("exhausted record");
    assert_eq!((always.job.as_str(), always.attempts), ("canary", 3));
    assert_eq!(always.reason, igsales_jobs::DeadReason::Exhausted);
    assert!(
        always.error.contains("asked to fail run 3"),
        "{}",
        always.error
    );
    assert!(always.worker.starts_with("canary-") && !always.id.is_empty());
    assert!(always.first_enqueued_at <= always.failed_at);
    let perm = letters
        .iter()
        .find(|l| l.payload["id"] == "perm")
        .expect("permanent record");
    assert_eq!(
        (perm.reason, perm.attempts),
        (igsales_jobs::DeadReason::Permanent, 1)
    );
    assert!(
        done_count(&url).await >= 3,
        "finished tasks are done in apalis too"
    );

    // "Wait 60 s": re-scheduled a minute out, no attempt used, no slot held.
    push(
        &url,
        CanaryV1 {
            fail_first: 1,
            fail_as: CanaryFailure::Wait,
            wait_secs: 60,
            ..canary("wait")
        },
    )
    .await;
    assert_eq!(wait_runs(&url, "wait", 1, Duration::from_secs(5)).await, 1);
    push(&url, canary("behind-the-wait")).await;
    assert_eq!(
        wait_runs(&url, "behind-the-wait", 1, Duration::from_secs(3)).await,
        1,
        "the only slot must be free while the other job waits"
    );
    let mut c = connection(&url).await;
    let scheduled: Vec<(String, f64)> = c
        .zrange_withscores("canary:scheduled", 0, -1)
        .await
        .expect("zrange");
    let now_s = now_ms() as f64 / 1000.0;
    let later: Vec<&(String, f64)> = scheduled
        .iter()
        .filter(|(_, at)| *at > now_s + 50.0)
        .collect();
    assert_eq!(later.len(), 1, "{scheduled:?}");
    let data: String = c.hget("canary:data", &later[0].0).await.expect("payload");
    let job: CanaryV1 = serde_json::from_str(&data).expect("canary");
    assert_eq!(
        (job.id.as_str(), job.delivery.attempt),
        ("wait", 0),
        "a wait uses no attempt"
    );
    assert!(job.delivery.first_enqueued_at.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_job_is_finished_by_another_within_the_orphan_timeout() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let url = redis.url();
    let mut a = start_worker(&env(&db, &url));
    push(
        &url,
        CanaryV1 {
            sleep_ms: 3000,
            ..canary("orphan")
        },
    )
    .await;
    assert_eq!(
        wait_runs(&url, "orphan", 1, Duration::from_secs(5)).await,
        1
    );
    a.signal("-KILL");
    a.wait(Duration::from_secs(5));
    let killed_at = now_ms();
    let _b = start_worker(&env(&db, &url));
    assert_eq!(
        wait_runs(&url, "orphan", 2, Duration::from_secs(15)).await,
        2,
        "re-run elsewhere"
    );
    let rerun_after = started_ms(&url, "orphan").await[1] - killed_at;
    eprintln!("orphaned job re-ran {rerun_after} ms after the kill");
    // Orphan timeout 3 s + one heartbeat (1 s) + whole-second rounding in apalis.
    assert!(
        rerun_after <= 5_000,
        "re-run {rerun_after} ms after the kill"
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    while done_count(&url).await < 1 {
        assert!(Instant::now() < deadline, "the re-run did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_retry_wait_exits_promptly_and_the_job_runs_later() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let url = redis.url();
    let e = with(&env(&db, &url), "JOB_INPROCESS_WAIT_MAX_MS", "10000");
    let mut a = start_worker(&e);
    // A wait short enough to be slept in process.
    push(
        &url,
        CanaryV1 {
            fail_first: 1,
            fail_as: CanaryFailure::Wait,
            wait_secs: 8,
            ..canary("sleeper")
        },
    )
    .await;
    assert_eq!(
        wait_runs(&url, "sleeper", 1, Duration::from_secs(5)).await,
        1
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    a.signal("-TERM");
    assert_eq!(a.wait(Duration::from_secs(5)), Some(0));
    assert!(
        t.elapsed() <= Duration::from_millis(2_500),
        "exit took {:?}",
        t.elapsed()
    );
    // Handed back, not lost: a new worker runs it once its time comes.
    let _b = start_worker(&e);
    assert_eq!(
        wait_runs(&url, "sleeper", 2, Duration::from_secs(15)).await,
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_redis_restart_that_lost_its_data_jobs_run_and_redis_gone_for_good_exits_1() {
    let db = TestDb::migrated().await;
    let mut private = PrivateRedis::start();
    let url = private.url();
    let e = with(
        &with(&env(&db, &url), "WORKER_MAX_RESTARTS", "1"),
        "WORKER_REDIS_RETRY_SECS",
        "2",
    );
    let mut w = start_worker(&e);
    // A crash without persistence: Redis forgets the workers; they register again.
    private.stop();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    private.restart();
    push(&url, canary("after-restart")).await;
    assert_eq!(
        wait_runs(&url, "after-restart", 1, Duration::from_secs(20)).await,
        1,
        "the worker came back by itself"
    );
    assert_eq!(w.exited(), None, "and is still running");
    // Gone for good: each call gives up after WORKER_REDIS_RETRY_SECS, the worker restarts once,
    // then the process exits 1 for the orchestrator to replace it.
    private.stop();
    assert_eq!(w.wait(Duration::from_secs(30)), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_stall_and_restart_under_load_run_each_job_once_and_no_worker_dies() {
    let db = TestDb::migrated().await;
    let mut private = PrivateRedis::start_persistent();
    let (proxy, e) = through_a_proxy(
        &db,
        &private,
        &[("WORKER_CONCURRENCY", "4"), ("WORKER_PREFETCH", "4")],
    )
    .await;
    let mut a = start_worker(&e);
    let mut b = start_worker(&with(&e, "METRICS_PORT", &free_port().to_string()));
    // Long enough that none finishes (and none starts) during the faults.
    let ids: Vec<String> = (0..16).map(|i| format!("load-{i}")).collect();
    for id in &ids {
        push(
            &private.url(),
            CanaryV1 {
                sleep_ms: 6_000,
                ..canary(id)
            },
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut started = 0;
        for id in &ids {
            started += runs(&private.url(), id).await.min(1);
        }
        if started >= 8 {
            break;
        }
        assert!(Instant::now() < deadline, "only {started} canaries started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Longer than the 3 s orphan timeout: every heartbeat is late when it ends.
    proxy.stall();
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.unstall();
    tokio::time::sleep(Duration::from_millis(500)).await;
    private.restart_gracefully();

    wait_done(&private.url(), ids.len(), Duration::from_secs(60)).await;
    // Past another orphan timeout: a job left unowned would have run again by now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for id in &ids {
        assert_eq!(runs(&private.url(), id).await, 1, "canary {id} ran once");
    }
    assert!(dead_letters(&private.url()).await.is_empty());
    assert_eq!(a.exited(), None, "worker a kept running");
    assert_eq!(b.exited(), None, "worker b kept running");
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_a_lost_fetch_reply_took_run_once_without_waiting_for_the_orphan_timeout() {
    let db = TestDb::migrated().await;
    let private = PrivateRedis::start();
    // Far beyond the test: no other worker's reaping may bring the jobs back (this worker
    // brings them back itself; which of its paths does it is not pinned down here).
    let (proxy, e) = through_a_proxy(&db, &private, &[("WORKER_ORPHAN_TIMEOUT_SECS", "600")]).await;
    let mut w = start_worker(&e);
    push(&private.url(), canary("warm-up")).await;
    assert_eq!(
        wait_runs(&private.url(), "warm-up", 1, Duration::from_secs(20)).await,
        1
    );

    // Fetches run on the server while their replies are thrown away.
    proxy.deafen();
    let ids: Vec<String> = (0..8).map(|i| format!("lost-{i}")).collect();
    for id in &ids {
        push(&private.url(), canary(id)).await;
    }
    let mut c = connection(&private.url()).await;
    // A push lands in the scheduled set; the worker promotes due jobs, then fetches. Whichever
    // of its commands goes first after the proxy went deaf loses its reply: usually a fetch,
    // whose jobs then sit in its in-flight set; sometimes the promotion, and then the worker
    // waits out the lost reply before it fetches, with the jobs still waiting. Either way
    // nothing may run until the replies come back, and each job runs once afterwards.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (taken, waiting) = loop {
        let inflight: Vec<String> = c.keys("canary:inflight*").await.expect("inflight keys");
        let mut taken = 0;
        for key in &inflight {
            taken += c.scard::<_, usize>(key).await.expect("inflight");
        }
        let active: usize = c.llen("canary:active").await.expect("active");
        let scheduled: usize = c.zcard("canary:scheduled").await.expect("scheduled");
        if taken >= 1 || Instant::now() >= deadline {
            break (taken, active + scheduled);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if taken == 0 {
        eprintln!("the lost reply was not a fetch's this time: the jobs are still waiting");
    }
    assert!(
        taken >= 1 || waiting == ids.len(),
        "the jobs are either held by the lost fetch or all still waiting: {taken} taken, {waiting} waiting"
    );
    for id in &ids {
        assert_eq!(runs(&private.url(), id).await, 0, "{id} is not running yet");
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    proxy.hear();

    for id in &ids {
        assert_eq!(
            wait_runs(&private.url(), id, 1, Duration::from_secs(20)).await,
            1,
            "{id} ran after the fault"
        );
    }
    wait_done(&private.url(), ids.len() + 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in &ids {
        assert_eq!(runs(&private.url(), id).await, 1, "{id} ran once");
    }
    assert!(dead_letters(&private.url()).await.is_empty());
    assert_eq!(w.exited(), None, "the worker kept running");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_running_the_crons_make_one_sweep_per_tick() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let url = redis.url();
    let e = with(&env(&db, &url), "TOKEN_REFRESH_CRON", "*/2 * * * * *");
    let _a = start_worker(&e);
    let _b = start_worker(&with(&e, "METRICS_PORT", &free_port().to_string()));
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let mut c = connection(&url).await;
    let payloads: Vec<String> = c.hvals("token_refresh_sweep:data").await.expect("jobs");
    let mut ticks: Vec<i64> = payloads
        .iter()
        .map(|p| {
            serde_json::from_str::<serde_json::Value>(p).expect("json")["tick"]
                .as_i64()
                .expect("tick")
        })
        .collect();
    ticks.sort_unstable();
    let distinct = {
        let mut d = ticks.clone();
        d.dedup();
        d
    };
    eprintln!("cron ticks: {ticks:?}");
    assert!(ticks.len() >= 2, "ticks: {ticks:?}");
    assert_eq!(ticks, distinct, "one sweep per tick");
    assert!(ticks.iter().all(|t| t % 2 == 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dlq_cli_lists_redacted_replays_and_drains() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let url = redis.url();
    let mut w = start_worker(&env(&db, &url));
    for id in ["dead-1", "dead-2"] {
        push(
            &url,
            CanaryV1 {
                fail_first: 1,
                fail_as: CanaryFailure::Permanent,
                ..canary(id)
            },
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while dead_letters(&url).await.len() < 2 {
        assert!(Instant::now() < deadline, "no dead letters");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A dead letter whose payload holds message text, to check redaction.
    let mut c = connection(&url).await;
    let mut record = dead_letters(&url).await[0].clone();
    record.id = "text-record".into();
    record.payload["event"] =
        serde_json::json!({"message": {"mid": "m1", "text": "my home address"}});
    let _: () = c
        .lpush("dlq:canary", serde_json::to_string(&record).expect("json"))
        .await
        .expect("lpush");

    let cli = |args: &[&str]| run(BIN, args, &[("REDIS_URL", url.clone())]);
    let listed = cli(&["dlq", "list", "--queue", "canary", "--json"]);
    listed.assert_code(0);
    let all: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).expect("one JSON array");
    assert_eq!(all.len(), 3);
    assert!(!listed.stdout.contains("my home address"));
    assert!(listed.stdout.contains("[redacted]"));
    let shown = cli(&[
        "dlq",
        "list",
        "--queue",
        "canary",
        "--json",
        "--show-payload",
    ]);
    assert!(shown.stdout.contains("my home address"));
    let table = cli(&["dlq", "list", "--queue", "canary"]);
    table.assert_code(0);
    assert!(table.stdout.contains("permanent"));

    // Without --queue: every list at once, each row naming its queue, newest first.
    let mut sent_record = record.clone();
    sent_record.id = "send-record".into();
    sent_record.job = "send_message".into();
    sent_record.failed_at = chrono::Utc::now() + chrono::Duration::seconds(5);
    let _: () = c
        .lpush(
            "dlq:send_message",
            serde_json::to_string(&sent_record).expect("json"),
        )
        .await
        .expect("lpush");
    let _: () = c
        .lpush(
            "dlq:webhook_invalid",
            r#"{"received_at":"2020-01-01T00:00:00.000Z","reason":"not_json","body":"hello from a customer"}"#,
        )
        .await
        .expect("lpush");
    let everything = cli(&["dlq", "list", "--json"]);
    everything.assert_code(0);
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&everything.stdout).expect("one JSON array");
    let queues: Vec<&str> = rows.iter().filter_map(|r| r["queue"].as_str()).collect();
    assert_eq!(
        queues,
        [
            "send_message",
            "canary",
            "canary",
            "canary",
            "webhook_invalid"
        ],
        "{}",
        everything.stdout
    );
    assert_eq!(rows[0]["id"], "send-record");
    assert!(!everything.stdout.contains("my home address"));
    assert!(!everything.stdout.contains("hello from a customer"));
    let table = cli(&["dlq", "list"]);
    table.assert_code(0);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", table.stdout);
    assert!(lines[0].starts_with("queue"));
    assert!(lines[1].starts_with("send_message") && lines[5].starts_with("webhook_invalid"));
    assert_eq!(
        cli(&["dlq", "list", "--limit", "2", "--json"])
            .stdout
            .matches("\"queue\"")
            .count(),
        2
    );
    let _: () = c
        .del(&["dlq:send_message", "dlq:webhook_invalid"])
        .await
        .expect("del");

    // Replay one by id: it runs again (now succeeding: its fail_first is spent) and leaves.
    let target = dead_letters(&url)
        .await
        .into_iter()
        .find(|l| l.payload["id"] == "dead-1")
        .expect("dead-1");
    let replayed = cli(&["dlq", "replay", "--queue", "canary", "--id", &target.id]);
    replayed.assert_code(0);
    assert!(
        replayed.stdout.contains("replayed 1"),
        "{}",
        replayed.stdout
    );
    assert_eq!(
        wait_runs(&url, "dead-1", 2, Duration::from_secs(5)).await,
        2
    );
    assert!(dead_letters(&url).await.iter().all(|l| l.id != target.id));
    assert_eq!(dead_letters(&url).await.len(), 2);
    assert_eq!(
        cli(&["dlq", "replay", "--queue", "canary", "--id", "nope"]).code,
        Some(1)
    );

    // Drain what is older than a second, only with --yes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        cli(&["dlq", "drain", "--queue", "canary", "--older-than", "1s"]).code,
        Some(2)
    );
    let drained = cli(&[
        "dlq",
        "drain",
        "--queue",
        "canary",
        "--older-than",
        "1s",
        "--yes",
    ]);
    drained.assert_code(0);
    assert!(drained.stdout.contains("drained 2"), "{}", drained.stdout);
    assert!(dead_letters(&url).await.is_empty());
    w.signal("-TERM");
    assert_eq!(w.wait(Duration::from_secs(5)), Some(0));
}

async fn superuser_exec(db: &TestDb, sql: &str) {
    use diesel_async::SimpleAsyncConnection;
    db.superuser_conn()
        .await
        .batch_execute(sql)
        .await
        .expect("superuser sql");
}

#[derive(diesel::QueryableByName, Debug)]
struct AccountRow {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    needs_reauth: bool,
    #[diesel(sql_type = diesel::sql_types::Double)]
    expires_in_days: f64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    refreshed_secs_ago: f64,
}

async fn account_rows(db: &TestDb) -> Vec<AccountRow> {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(
        "SELECT needs_reauth,
                coalesce(extract(epoch FROM token_expires_at - now()) / 86400, -1)::float8 AS expires_in_days,
                extract(epoch FROM now() - token_refreshed_at)::float8 AS refreshed_secs_ago
         FROM instagram_accounts ORDER BY instagram_page_id",
    )
    .load(&mut db.superuser_conn().await)
    .await
    .expect("accounts")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_sweep_refreshes_due_tokens_and_flags_rejected_ones_for_reauth() {
    use igsales_schema::accounts;
    use igsales_tests::fake_meta::{FakeAccount, FakeMeta, FakeMetaConfig};
    use igsales_tests::shops::{self, Account, Shop};

    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let url = redis.url();
    let fake = FakeMeta::start(FakeMetaConfig::default()).await;
    let app = db.app_db(2).await;
    let vault = igsales_schema::Vault::new(
        &igsales_config::parse_key_ring(&key_entry(1, 1)).expect("ring"),
    );
    let mut tokens = Vec::new();
    for (page, name) in [
        ("17841400000000001", "due"),
        ("17841400000000002", "rejected"),
        ("17841400000000003", "fresh"),
    ] {
        let account = FakeAccount {
            user_id: page.into(),
            app_scoped_id: "1".into(),
            username: name.into(),
        };
        let token = fake.issue_long_lived_token(&account);
        let m = igsales_schema::MerchantId::new_random();
        let account = Account::new(&vault, page, &token).expires_in_days(5);
        shops::seed(&app, m, &Shop::named("Shop").with_account(account))
            .await
            .expect("seed account");
        tokens.push((m, page.to_owned(), token));
    }
    fake.expire_token(&tokens[1].2);
    // Two of them were last refreshed two days ago; the third just now (too young to refresh).
    superuser_exec(&db, "UPDATE instagram_accounts SET token_refreshed_at = now() - interval '2 days', connected_at = now() - interval '30 days'
                        WHERE instagram_page_id IN ('17841400000000001', '17841400000000002')").await;

    let e = with(
        &with(&env(&db, &url), "TOKEN_REFRESH_CRON", "* * * * * *"),
        "GRAPH_API_BASE_URL",
        &fake.base_url(),
    );
    let _w = start_worker(&e);
    let deadline = Instant::now() + Duration::from_secs(15);
    let rows = loop {
        let rows = account_rows(&db).await;
        if (rows[0].expires_in_days > 50.0 && rows[1].needs_reauth) || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        rows[0].expires_in_days > 59.0 && !rows[0].needs_reauth,
        "{rows:?}"
    );
    assert!(rows[0].refreshed_secs_ago < 30.0, "{rows:?}");
    assert!(rows[1].needs_reauth, "{rows:?}");
    assert!(
        rows[2].expires_in_days < 6.0 && !rows[2].needs_reauth,
        "too young to refresh: {rows:?}"
    );

    // The stored token is the one Meta issued on refresh, encrypted.
    let (m, page, old) = tokens[0].clone();
    let v = &vault;
    let now_token = app
        .as_merchant(m, async move |c: &diesel_async::AsyncPgConnection| {
            accounts::token(c, v, m, &page).await
        })
        .await
        .expect("decrypts");
    assert_ne!(now_token.expose(), old);
    assert!(
        fake.issued_tokens()
            .contains(&now_token.expose().to_owned())
    );

    let mut c = connection(&url).await;
    let raws: Vec<String> = c.lrange("dlq:refresh_token", 0, -1).await.expect("dlq");
    let letters: Vec<DeadLetter> = raws
        .iter()
        .map(|r| serde_json::from_str(r).expect("record"))
        .collect();
    assert!(
        !letters.is_empty(),
        "the rejected token leaves a dead letter"
    );
    assert!(
        letters
            .iter()
            .all(|l| l.reason == igsales_jobs::DeadReason::NeedsReauth && l.attempts == 1)
    );
    assert!(
        letters
            .iter()
            .all(|l| l.payload["instagram_account_id"] == "17841400000000002")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn housekeeping_applies_retention_and_caps_the_dead_letter_lists() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let url = redis.url();
    let m = uuid::Uuid::new_v4();
    superuser_exec(&db, &format!(
        "INSERT INTO merchants (id, name) VALUES ('{m}', 'Shop');
         INSERT INTO webhook_events (merchant_id, event_id, kind, instagram_page_id, received_at) VALUES
           ('{m}', 'message:old', 'message', '1', now() - interval '3 days'),
           ('{m}', 'message:new', 'message', '1', now());"
    )).await;
    let mut c = connection(&url).await;
    // Dead letters are pushed newest first: three that failed 3 days ago, then five recent.
    let at = |days_ago: i64| {
        (chrono::Utc::now() - chrono::Duration::days(days_ago))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    for i in 0..3 {
        let _: () = c
            .lpush(
                "dlq:send_message",
                format!("{{\"n\":\"old{i}\",\"failed_at\":\"{}\"}}", at(3)),
            )
            .await
            .expect("lpush");
    }
    let _: () = c
        .lpush(
            "dlq:webhook_invalid",
            format!("{{\"received_at\":\"{}\"}}", at(3)),
        )
        .await
        .expect("lpush");
    for i in 0..5 {
        let _: () = c
            .lpush(
                "dlq:canary",
                format!("{{\"n\":{i},\"failed_at\":\"{}\"}}", at(0)),
            )
            .await
            .expect("lpush");
        let _: () = c
            .lpush(
                "dlq:send_message",
                format!("{{\"n\":\"new{i}\",\"failed_at\":\"{}\"}}", at(0)),
            )
            .await
            .expect("lpush");
    }

    let mut e = with(&env(&db, &url), "HOUSEKEEPING_CRON", "* * * * * *");
    e = with(&e, "RETENTION_DAYS", "1");
    e = with(&e, "DLQ_RETENTION_DAYS", "2");
    e = with(&e, "DLQ_MAX_LEN", "4");
    let _w = start_worker(&e);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let canary: usize = c.llen("dlq:canary").await.expect("llen");
        let sends: usize = c.llen("dlq:send_message").await.expect("llen");
        if (canary == 4 && sends == 4) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        c.llen::<_, usize>("dlq:canary").await.expect("llen"),
        4,
        "capped at DLQ_MAX_LEN, newest kept"
    );
    let newest: String = c.lindex("dlq:canary", 0).await.expect("lindex");
    assert!(newest.starts_with("{\"n\":4,"), "{newest}");
    // The old ones went by age (DLQ_RETENTION_DAYS), then the cap kept the newest four.
    let sends: Vec<String> = c.lrange("dlq:send_message", 0, -1).await.expect("lrange");
    assert!(
        sends.iter().all(|r| r.contains("\"new")),
        "no dead letter older than DLQ_RETENTION_DAYS: {sends:?}"
    );
    assert_eq!(
        c.llen::<_, usize>("dlq:webhook_invalid")
            .await
            .expect("llen"),
        0,
        "unreadable webhooks age out too"
    );

    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Text)]
        event_id: String,
    }
    use diesel_async::RunQueryDsl;
    let left: Vec<Id> = diesel::sql_query("SELECT event_id FROM webhook_events")
        .load(&mut db.superuser_conn().await)
        .await
        .expect("events");
    assert_eq!(
        left.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(),
        ["message:new"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_jobs_data_leaves_redis_within_the_sweep_interval() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let url = redis.url();
    let e = with(&env(&db, &url), "FINISHED_JOB_SWEEP_SECS", "1");
    let _w = start_worker(&e);
    for i in 0..20 {
        push(&url, canary(&format!("ok-{i}"))).await;
    }
    // One that dies (a permanent failure): its dead letter stays in dlq:canary, its job data goes.
    push(
        &url,
        CanaryV1 {
            fail_first: 1,
            fail_as: CanaryFailure::Permanent,
            ..canary("dies")
        },
    )
    .await;
    // One that keeps waiting: its data must stay, or it could never run.
    push(
        &url,
        CanaryV1 {
            fail_first: 1,
            fail_as: CanaryFailure::Wait,
            wait_secs: 600,
            ..canary("waits")
        },
    )
    .await;
    assert_eq!(
        wait_runs(&url, "ok-19", 1, Duration::from_secs(10)).await,
        1
    );
    assert_eq!(
        wait_runs(&url, "waits", 1, Duration::from_secs(10)).await,
        1
    );
    let mut c = connection(&url).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut data, mut done, mut dead) = (usize::MAX, usize::MAX, usize::MAX);
    while Instant::now() < deadline {
        data = c.hlen("canary:data").await.expect("hlen");
        done = c.scard("canary:done").await.expect("scard");
        dead = c.scard("canary:dead").await.expect("scard");
        if data == 1 && done == 0 && dead == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (data, done, dead),
        (1, 0, 0),
        "only the waiting job's data is left"
    );
    let left: Vec<String> = c.hvals("canary:data").await.expect("hvals");
    assert!(left[0].contains("\"waits\""), "{left:?}");
    assert_eq!(
        dead_letters(&url).await.len(),
        1,
        "the dead letter itself stays"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn housekeeping_deletes_100k_old_events_in_batches_inside_a_short_statement_timeout() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let url = redis.url();
    let m = uuid::Uuid::new_v4();
    superuser_exec(&db, &format!(
        "INSERT INTO merchants (id, name) VALUES ('{m}', 'Shop');
         INSERT INTO webhook_events (merchant_id, event_id, kind, instagram_page_id, received_at)
           SELECT '{m}', 'message:old-' || g, 'message', '1', now() - interval '40 days' - g * interval '1 second'
           FROM generate_series(1, 100000) AS g;
         INSERT INTO webhook_events (merchant_id, event_id, kind, instagram_page_id, received_at)
           SELECT '{m}', 'message:new-' || g, 'message', '1', now() - g * interval '1 second'
           FROM generate_series(1, 1000) AS g;
         ANALYZE webhook_events;"
    )).await;
    // One DELETE of all 100,000 does not fit in a 40 ms statement timeout (it fails every time
    // here); batches of 1,000 do, each its own transaction.
    let mut e = with(&env(&db, &url), "HOUSEKEEPING_CRON", "*/2 * * * * *");
    e = with(&e, "DATABASE_STATEMENT_TIMEOUT_MS", "40");
    e = with(&e, "HOUSEKEEPING_BATCH_SIZE", "1000");
    let _w = start_worker(&e);
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        old: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        new: i64,
    }
    use diesel_async::RunQueryDsl;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut left = Count { old: -1, new: -1 };
    while Instant::now() < deadline {
        left = diesel::sql_query(
            "SELECT count(*) FILTER (WHERE event_id LIKE 'message:old-%') AS old,
                    count(*) FILTER (WHERE event_id LIKE 'message:new-%') AS new
             FROM webhook_events",
        )
        .get_result(&mut db.superuser_conn().await)
        .await
        .expect("count");
        if left.old == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        (left.old, left.new),
        (0, 1000),
        "every old event gone, every recent one kept"
    );
    let mut c = connection(&url).await;
    let dead: usize = c.llen("dlq:housekeeping").await.expect("llen");
    assert_eq!(dead, 0, "housekeeping never died on the way");
}
