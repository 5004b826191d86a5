//! Redis failover through Sentinel (SPEC §2): a primary, two replicas and three sentinels of the
//! test's own; the real ingress and worker find the master through the sentinels, the ingress
//! waits for one replica (`REDIS_MIN_REPLICAS_ACK=1`). Under a stream of DMs, each redelivered
//! Meta-style until it is answered 200, the primary is killed: the webhooks are 503 during the
//! gap and 200 again after, readiness follows, and every DM answered 200 is answered exactly
//! once, the later ones by jobs that ran on the promoted master.
//! Run alone with `cargo build --bin ingress --bin worker && cargo test -p igsales-tests --test failover`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use igsales_config::parse_key_ring;
use igsales_schema::Vault;
use igsales_tests::TestDb;
use igsales_tests::cli::key_entry;
use igsales_tests::fake_llm::{FakeLlm, FakeLlmConfig};
use igsales_tests::fake_meta::{FakeMeta, FakeMetaConfig, webhook as wh};
use igsales_tests::http::get;
use igsales_tests::process::{Process, free_port};
use igsales_tests::sentinel::{MASTER, RedisSet};
use igsales_tests::stack::bin_dir;

const SECRET: &str = "failover-ig-app-secret";
const DMS: usize = 36;
const REPLY: &str = "Temos sim! Quer ver as cores?";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the delivery of one DM saw: each attempt's status and when.
#[derive(Default, Clone)]
struct Delivery {
    attempts: Vec<(Instant, u16)>,
}

impl Delivery {
    fn acknowledged_at(&self) -> Option<Instant> {
        self.attempts
            .iter()
            .find(|(_, s)| *s == 200)
            .map(|(t, _)| *t)
    }
}

/// Jobs not finished yet on the master at `port`: queued, scheduled or in flight.
fn backlog(conn: &mut redis::Connection) -> usize {
    let mut n = 0;
    for q in ["inbound_event", "inbound_signal", "send_message"] {
        n += redis::cmd("LLEN")
            .arg(format!("{q}:active"))
            .query::<usize>(conn)
            .unwrap_or(usize::MAX / 8);
        n += redis::cmd("ZCARD")
            .arg(format!("{q}:scheduled"))
            .query::<usize>(conn)
            .unwrap_or(usize::MAX / 8);
        let sets: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{q}:inflight:*"))
            .query(conn)
            .unwrap_or_default();
        for s in sets {
            n += redis::cmd("SCARD")
                .arg(&s)
                .query::<usize>(conn)
                .unwrap_or(usize::MAX / 8);
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_primary_is_followed_to_the_promoted_replica_and_nothing_answered_200_is_lost() {
    let db = TestDb::migrated().await;
    let mut set = tokio::task::block_in_place(|| RedisSet::with_sentinels(2));
    let fake = FakeMeta::start(FakeMetaConfig {
        client_secret: SECRET.into(),
        ..FakeMetaConfig::default()
    })
    .await;
    let llm = FakeLlm::start(FakeLlmConfig::default()).await;
    llm.set_reply(Some(REPLY.to_owned()));
    let app_db = db.app_db(2).await;
    let vault = Vault::new(&parse_key_ring(&key_entry(1, 7)).expect("key ring"));
    let page = igsales_tests::shops::connected(&app_db, &vault, &fake, 1, 3, "178416")
        .await
        .expect("a connected shop")
        .remove(0)
        .1;

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let webhook = format!("{base}/webhooks/instagram");
    fake.deliver_echoes_to(&webhook, SECRET);
    let common = vec![
        ("DATABASE_URL", db.app_url()),
        // In sentinel mode the URL's host is not used: only the sentinels name the master.
        (
            "REDIS_URL",
            "redis://master-named-by-the-sentinels/0".to_owned(),
        ),
        ("REDIS_SENTINELS", set.sentinels()),
        ("REDIS_SENTINEL_MASTER", MASTER.to_owned()),
        ("REDIS_CONNECT_TIMEOUT_MS", "500".to_owned()),
        ("REDIS_RESPONSE_TIMEOUT_MS", "1000".to_owned()),
        ("ENCRYPTION_KEY", key_entry(1, 7)),
        ("IG_APP_SECRET", SECRET.to_owned()),
        ("GRAPH_API_VERSION", "v26.0".to_owned()),
        ("GRAPH_API_BASE_URL", fake.base_url()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let mut ingress_env = common.clone();
    ingress_env.extend([
        ("META_APP_ID", "990602627938098".to_owned()),
        ("API_BASE_URL", base.clone()),
        ("PORT", port.to_string()),
        ("META_WEBHOOK_VERIFY_TOKEN", "failover-verify".to_owned()),
        (
            "ADMIN_API_TOKEN",
            "failover-admin-token-0123456789abcdef".to_owned(),
        ),
        ("OAUTH_SUCCESS_REDIRECT_URL", format!("{base}/healthz")),
        ("OAUTH_FAILURE_REDIRECT_URL", format!("{base}/healthz")),
        ("IG_OAUTH_BASE_URL", fake.base_url()),
        (
            "IG_AUTHORIZE_URL",
            format!("{}/oauth/authorize", fake.base_url()),
        ),
        ("REDIS_MIN_REPLICAS_ACK", "1".to_owned()),
        ("REDIS_WAIT_TIMEOUT_MS", "300".to_owned()),
    ]);
    let metrics_port = free_port();
    let mut worker_env = common;
    worker_env.extend([
        ("OPENAI_API_KEY", FakeLlmConfig::default().api_key),
        ("OPENAI_BASE_URL", llm.base_url()),
        ("OPENAI_MODEL", "fake-model".to_owned()),
        ("METRICS_PORT", metrics_port.to_string()),
        ("WORKER_POLL_INTERVAL_MS", "50".to_owned()),
        ("GRAPH_THROTTLE_WAIT_SECS", "1".to_owned()),
        ("GRAPH_MAX_PAUSE_SECS", "1".to_owned()),
        ("JOB_BACKOFF_BASE_MS", "50".to_owned()),
        ("JOB_BACKOFF_MAX_MS", "200".to_owned()),
        ("JOB_UNAVAILABLE_WAIT_MS", "500".to_owned()),
        ("ECHO_CONFIRM_SECS", "2".to_owned()),
        ("TOKEN_REFRESH_CRON", "0 0 0 1 1 *".to_owned()),
        ("HOUSEKEEPING_CRON", "0 0 0 1 1 *".to_owned()),
    ]);
    let bins = bin_dir();
    let _ingress = Process::start(
        &bins.join("ingress").display().to_string(),
        &[],
        &ingress_env,
        port,
    );
    let mut worker = Process::start(
        &bins.join("worker").display().to_string(),
        &["run"],
        &worker_env,
        metrics_port,
    );

    // Readiness, sampled all along.
    let readiness = Arc::new(Mutex::new(Vec::<(Instant, u16)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (readiness, stop) = (readiness.clone(), stop.clone());
        let url = format!("{base}/readyz");
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let status = get(url.clone(), vec![]).await.status;
                readiness
                    .lock()
                    .expect("samples")
                    .push((Instant::now(), status));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The DMs: one per customer, every 150 ms, each delivered again 200 ms after any non-200.
    let deliveries = Arc::new(Mutex::new(HashMap::<String, Delivery>::new()));
    let mut senders = Vec::new();
    let mut kill = None;
    for i in 0..DMS {
        let customer = format!("9{i:09}");
        let ts = now_ms();
        let body = wh::envelope(&[wh::messaging_entry(
            &page,
            ts,
            vec![wh::text_message(
                &customer,
                &page,
                &format!("failover-{i}"),
                "Oi! Tem camiseta azul?",
                ts,
            )],
        )])
        .to_string();
        let (deliveries, url) = (deliveries.clone(), webhook.clone());
        senders.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                let (u, b) = (url.clone(), body.clone());
                let status = tokio::task::spawn_blocking(move || wh::deliver(&u, SECRET, &b).0)
                    .await
                    .unwrap_or(0);
                deliveries
                    .lock()
                    .expect("deliveries")
                    .entry(customer.clone())
                    .or_default()
                    .attempts
                    .push((Instant::now(), status));
                if status == 200 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
        if i == 10 {
            // A third of the way in, the primary crashes.
            tokio::task::block_in_place(|| set.kill(0));
            kill = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let killed_at = kill.expect("the primary was killed");
    let promoted = tokio::task::block_in_place(|| set.wait_for_promotion(Duration::from_secs(30)));
    for s in senders {
        s.await.expect("sender");
    }
    let deliveries = deliveries.lock().expect("deliveries").clone();
    let unacknowledged: Vec<&String> = deliveries
        .iter()
        .filter(|(_, d)| d.acknowledged_at().is_none())
        .map(|(c, _)| c)
        .collect();
    assert!(
        unacknowledged.is_empty(),
        "never answered 200 within 60 s: {unacknowledged:?}"
    );

    // The gap: some 503s after the kill, then 200s again within 30 s of it.
    let after_kill: Vec<(Instant, u16)> = deliveries
        .values()
        .flat_map(|d| d.attempts.iter().copied())
        .filter(|(t, _)| *t > killed_at)
        .collect();
    assert!(
        after_kill.iter().any(|(_, s)| *s == 503),
        "no webhook was refused while the master was gone"
    );
    let first_503 = after_kill
        .iter()
        .filter(|(_, s)| *s == 503)
        .map(|(t, _)| *t)
        .min()
        .expect("a 503");
    let back = after_kill
        .iter()
        .filter(|(t, s)| *s == 200 && *t > first_503)
        .map(|(t, _)| *t)
        .min()
        .expect("200s after the gap");
    assert!(
        back.duration_since(killed_at) < Duration::from_secs(30),
        "webhooks were answered 200 again {:?} after the kill",
        back.duration_since(killed_at)
    );
    eprintln!(
        "after the kill: {} attempts, {} refused; first 503 at +{:?}, 200 again at +{:?}",
        after_kill.len(),
        after_kill.iter().filter(|(_, s)| *s != 200).count(),
        first_503.duration_since(killed_at),
        back.duration_since(killed_at)
    );
    let after_failover = deliveries
        .values()
        .filter(|d| d.acknowledged_at().is_some_and(|t| t >= back))
        .count();
    assert!(
        after_failover > 0,
        "some DMs were enqueued on the new master"
    );

    // Every DM answered 200 gets exactly one reply, the later ones from the new master's jobs.
    let replies = |fake: &FakeMeta| -> HashMap<String, usize> {
        let mut n = HashMap::new();
        for m in fake.sent_messages() {
            *n.entry(m.recipient_id).or_default() += 1;
        }
        n
    };
    let mut master = set.connection(promoted);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let sent = replies(&fake);
        let drained = tokio::task::block_in_place(|| backlog(&mut master)) == 0;
        if drained && deliveries.keys().all(|c| sent.contains_key(c)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {DMS} DMs answered, queues drained: {drained}",
            deliveries.keys().filter(|c| sent.contains_key(*c)).count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = replies(&fake);
    let twice: Vec<(&String, &usize)> = sent.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "answered more than once: {twice:?}");
    assert_eq!(sent.len(), DMS, "one reply per DM, to no one else");
    assert!(
        fake.sent_messages()
            .iter()
            .all(|m| m.text.as_deref() == Some(REPLY))
    );
    assert_eq!(worker.exited(), None, "the worker kept running");

    // Readiness: 503 while the master was gone, 200 after.
    let end = Instant::now();
    let deadline = end + Duration::from_secs(10);
    while !readiness
        .lock()
        .expect("samples")
        .iter()
        .any(|(t, s)| *t > end && *s == 200)
    {
        assert!(
            Instant::now() < deadline,
            "the ingress never became ready again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    poller.await.expect("poller");
    let samples = readiness.lock().expect("samples").clone();
    assert!(
        samples.iter().any(|(t, s)| *t < killed_at && *s == 200),
        "ready before the kill"
    );
    assert!(
        samples.iter().any(|(t, s)| *t > killed_at && *s == 503),
        "not ready while the master was gone"
    );
}
