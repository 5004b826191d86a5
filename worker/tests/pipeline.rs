//! The sales pipeline end to end in a running worker: inbound events → model → Graph sends,
//! against real Postgres and Redis, the fake Meta and the fake LLM.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::Utc;
use igsales_config::parse_key_ring;
use igsales_jobs::{DeadLetter, DeadReason, InboundEventV1, JobQueue, SendMessageV1};
use igsales_meta::webhook::EventKind;
use igsales_schema::products::Product;
use igsales_schema::{MerchantId, Vault};
use igsales_tests::cli::{key_entry, run};
use igsales_tests::fake_llm::{FakeLlm, FakeLlmConfig, LlmFailure, Misbehave, UNKNOWN_SKU};
use igsales_tests::fake_meta::{
    Endpoint, Failure, FakeAccount, FakeMeta, FakeMetaConfig, webhook as wh,
};
use igsales_tests::process::{Process, free_port};
use igsales_tests::shops::{self, Account, Shop};
use igsales_tests::worker_env::{self, Env, with};
use igsales_tests::{TestDb, TestRedis};
use redis::AsyncCommands;

const BIN: &str = env!("CARGO_BIN_EXE_worker");
const PERSONA: &str = "Você é a Loja Azul: simpática, breve e honesta.";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct Pipeline {
    db: TestDb,
    redis: TestRedis,
    fake: FakeMeta,
    llm: FakeLlm,
    merchant: MerchantId,
    account: String,
    env: Env,
    _worker: Process,
}

fn base_env(db: &TestDb, redis: &TestRedis, fake: &FakeMeta, llm: &FakeLlm) -> Env {
    let fast = worker_env::fast(db.app_url(), redis.url(), fake.base_url(), llm.base_url());
    worker_env::with_all(
        &fast,
        &[
            ("WORKER_CONCURRENCY", "8"),
            ("JOB_INPROCESS_WAIT_MAX_MS", "2500"),
            ("META_HTTP_TIMEOUT_MS", "700"),
            ("ECHO_CONFIRM_SECS", "2"),
            ("GRAPH_THROTTLE_WAIT_SECS", "1"),
            ("GRAPH_MAX_PAUSE_SECS", "1"),
        ],
    )
}

fn product(sku: &str, name: &str, price: &str, stock: i32) -> Product {
    Product {
        sku: sku.into(),
        name: name.into(),
        description: String::new(),
        tags: String::new(),
        price: price.parse().expect("decimal"),
        currency: Some("BRL".into()),
        stock: Some(stock),
        url: None,
        image_url: None,
    }
}

impl Pipeline {
    /// The tests here count text parts: the model chooses no products, so no card message
    /// follows the text (cards have tests of their own, with [`Pipeline::with_cards`]).
    async fn start(
        adjust: impl FnOnce(Vec<(&'static str, String)>) -> Vec<(&'static str, String)>,
    ) -> Pipeline {
        Self::start_as(false, adjust).await
    }

    /// Products with links and images, and a model that chooses them for cards.
    async fn with_cards(
        adjust: impl FnOnce(Vec<(&'static str, String)>) -> Vec<(&'static str, String)>,
    ) -> Pipeline {
        Self::start_as(true, adjust).await
    }

    async fn start_as(
        cards: bool,
        adjust: impl FnOnce(Vec<(&'static str, String)>) -> Vec<(&'static str, String)>,
    ) -> Pipeline {
        let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
        let fake = FakeMeta::start(FakeMetaConfig::default()).await;
        let llm = FakeLlm::start(FakeLlmConfig::default()).await;
        llm.choose_products(cards);
        let account = FakeAccount::default();
        let token = fake.issue_long_lived_token(&account);
        let merchant = MerchantId::new_random();
        let vault = Vault::new(&parse_key_ring(&key_entry(1, 1)).expect("ring"));
        let mut products = [
            product("TOTE-BLU", "Bolsa azul", "89.90", 4),
            product("TEE-GRN", "Camiseta verde", "49.90", 0),
        ];
        if cards {
            for p in &mut products {
                p.url = Some(format!("https://loja.example/p/{}", p.sku));
                p.image_url = Some(format!("https://loja.example/img/{}.jpg", p.sku));
            }
        }
        let shop = Shop {
            name: "Loja Azul",
            persona: Some(PERSONA),
            products: &products,
            account: Some(Account {
                username: "lojaazul",
                ..Account::new(&vault, &account.user_id, &token)
            }),
        };
        shops::seed(&db.app_db(1).await, merchant, &shop)
            .await
            .expect("seed");
        let env = adjust(base_env(&db, &redis, &fake, &llm));
        let worker = worker_env::start(BIN, &env);
        Pipeline {
            db,
            redis,
            fake,
            llm,
            merchant,
            account: account.user_id,
            env,
            _worker: worker,
        }
    }

    fn event(&self, kind: EventKind, event_id: String, event: serde_json::Value) -> InboundEventV1 {
        InboundEventV1 {
            merchant_id: self.merchant.0,
            instagram_account_id: self.account.clone(),
            event_id,
            kind,
            entry_time_ms: None,
            received_at: Utc::now(),
            event: serde_json::value::RawValue::from_string(event.to_string()).expect("raw"),
            delivery: Default::default(),
        }
    }

    fn dm(&self, customer: &str, mid: &str, text: &str, ts_ms: i64) -> InboundEventV1 {
        self.event(
            EventKind::Message,
            igsales_meta::event_id::message(mid),
            wh::text_message(customer, &self.account, mid, text, ts_ms),
        )
    }

    fn echo(&self, customer: &str, mid: &str, text: &str) -> InboundEventV1 {
        self.event(
            EventKind::Echo,
            igsales_meta::event_id::echo(mid),
            wh::echo(&self.account, customer, mid, text, now_ms()),
        )
    }

    /// A second `worker run` process on the same queues (its own metrics port).
    fn another_worker(&self) -> Process {
        let env = with(&self.env, "METRICS_PORT", &free_port().to_string());
        worker_env::start(BIN, &env)
    }

    async fn push(&self, job: InboundEventV1) {
        JobQueue::<InboundEventV1>::new(self.conn().await)
            .push(job)
            .await
            .expect("push");
    }

    async fn conn(&self) -> igsales_jobs::RedisConn {
        igsales_tests::redis::manager(&self.redis.url()).await
    }

    /// Waits until the fake has accepted `n` sends (or the deadline), then returns them.
    async fn sends(
        &self,
        n: usize,
        within: Duration,
    ) -> Vec<igsales_tests::fake_meta::SentMessage> {
        let deadline = Instant::now() + within;
        loop {
            let sent = self.fake.sent_messages();
            if sent.len() >= n || Instant::now() > deadline {
                return sent;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Send API `message` objects sent to `customer` once `n` have gone (or the deadline).
    async fn sends_to(&self, customer: &str, n: usize, within: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let sent: Vec<serde_json::Value> = self
                .fake
                .sent_messages()
                .into_iter()
                .filter(|m| m.recipient_id == customer)
                .map(|m| m.body["message"].clone())
                .collect();
            if sent.len() >= n || Instant::now() > deadline {
                return sent;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A counter of the worker's `/metrics`: the line naming `name` and `label`.
    async fn metric(&self, name: &str, label: &str) -> f64 {
        let port = &self
            .env
            .iter()
            .find(|(k, _)| *k == "METRICS_PORT")
            .expect("metrics port")
            .1;
        let answer =
            igsales_tests::http::get(format!("http://127.0.0.1:{port}/metrics"), vec![]).await;
        answer
            .body
            .lines()
            .find(|l| l.starts_with(name) && l.contains(label))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    async fn dead(&self, queue: &str, n: usize, within: Duration) -> Vec<DeadLetter> {
        let deadline = Instant::now() + within;
        let mut c = self.conn().await;
        loop {
            let raws: Vec<String> = c.lrange(format!("dlq:{queue}"), 0, -1).await.expect("dlq");
            if raws.len() >= n || Instant::now() > deadline {
                return raws
                    .iter()
                    .map(|r| serde_json::from_str(r).expect("record"))
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn sql_count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        use diesel_async::RunQueryDsl;
        let r: N = diesel::sql_query(sql)
            .get_result(&mut self.db.superuser_conn().await)
            .await
            .expect("count");
        r.n
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dm_gets_one_reply_built_from_the_persona_the_catalog_and_the_conversation() {
    // Room for a 2,400-byte answer (the fake truncates at max_tokens × 4 bytes).
    let p = Pipeline::start(|e| with(&e, "OPENAI_MAX_TOKENS", "600")).await;
    let t0 = now_ms() - 60_000;
    p.push(p.dm("5550001", "mid-1", "Oi! Bom dia", t0)).await;
    assert_eq!(p.sends(1, Duration::from_secs(10)).await.len(), 1);
    p.push(p.dm("5550001", "mid-2", "Vocês têm a bolsa azul?", t0 + 30_000))
        .await;
    let sent = p.sends(2, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 2, "one reply per DM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p.fake.sent_messages().len(), 2, "and no more");

    let reply = sent[1].text.clone().expect("text");
    assert!(
        reply.contains("Bolsa azul") && reply.contains("89.9"),
        "{reply}"
    );
    assert_eq!(sent[1].recipient_id, "5550001");
    let requests = p.llm.requests();
    assert_eq!(requests.len(), 2);
    let prompt = &requests[1];
    let system = prompt.last("system").expect("system message");
    assert!(system.starts_with(PERSONA), "{system}");
    assert!(
        system.contains("Bolsa azul (SKU TOTE-BLU): 89.9 BRL, stock 4"),
        "{system}"
    );
    assert!(
        prompt
            .messages
            .iter()
            .any(|(role, text)| role == "user" && text == "Oi! Bom dia"),
        "previous message in the prompt"
    );
    assert!(
        prompt
            .last("user")
            .expect("user")
            .contains("Vocês têm a bolsa azul?")
    );
    assert!(prompt.max_tokens.is_some());

    // A long answer goes out as ≤ 1000-byte parts, in order.
    p.llm.reply_next("palavra ".repeat(300));
    p.push(p.dm("5550001", "mid-3", "Me conta tudo", t0 + 50_000))
        .await;
    let sent = p.sends(5, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 5);
    let parts: Vec<&str> = sent[2..]
        .iter()
        .map(|s| s.text.as_deref().expect("text"))
        .collect();
    assert!(
        parts
            .iter()
            .all(|t| t.len() <= 1000 && t.starts_with("palavra")),
        "{parts:?}"
    );
    // Capped at 2 KB, cut only between words.
    let long = "palavra ".repeat(300);
    assert_eq!(parts.join(" "), long[..2048].trim_end());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_run_twice_and_a_replayed_dead_letter_send_nothing_more() {
    let p = Pipeline::start(|e| e).await;
    let dm = p.dm("5550002", "mid-twice", "Tem camiseta verde?", now_ms());
    p.push(dm.clone()).await;
    p.push(dm).await;
    assert_eq!(p.sends(1, Duration::from_secs(10)).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(p.fake.sent_messages().len(), 1, "one send for one event");
    assert_eq!(p.llm.request_count(), 1, "one model call");
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM outbound_messages")
            .await,
        1
    );
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM webhook_events")
            .await,
        1
    );

    // A dead letter of the sent part, replayed: nothing goes out.
    let payload = serde_json::json!({
        "merchant_id": p.merchant.0, "instagram_account_id": p.account, "recipient_igsid": "5550002",
        "idempotency_key": "message:mid-twice#0", "window_closes_at": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
    });
    let record = DeadLetter {
        id: "01JREPLAY".into(),
        job: "send_message".into(),
        payload,
        error: "synthetic".into(),
        reason: DeadReason::Exhausted,
        attempts: 3,
        first_enqueued_at: Utc::now(),
        failed_at: Utc::now(),
        worker: "test".into(),
    };
    let _: () = p
        .conn()
        .await
        .lpush(
            "dlq:send_message",
            serde_json::to_string(&record).expect("json"),
        )
        .await
        .expect("lpush");
    run(
        BIN,
        &["dlq", "replay", "--queue", "send_message", "--all"],
        &[("REDIS_URL", p.redis.url())],
    )
    .assert_code(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(p.fake.sent_messages().len(), 1);

    // A reply that committed but whose send never reached the queue (the push failed after the
    // commit) is a part still `pending`: the event's next delivery enqueues it, without asking
    // the model again; once it is out, a further delivery sends nothing.
    use diesel_async::SimpleAsyncConnection;
    p.db.superuser_conn()
        .await
        .batch_execute("UPDATE outbound_messages SET status = 'pending', send_attempts = 0, meta_message_id = NULL, sending_started_at = NULL")
        .await
        .expect("make the part pending");
    let again = p.dm("5550002", "mid-twice", "Tem camiseta verde?", now_ms());
    p.push(again.clone()).await;
    assert_eq!(p.sends(2, Duration::from_secs(10)).await.len(), 2);
    p.push(again).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(p.fake.sent_messages().len(), 2);
    assert_eq!(p.llm.request_count(), 1, "the model was asked once in all");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttle_storm_is_waited_out_without_using_attempts() {
    // Two attempts only: if the waits used attempts, the send would be dead by the third throttle.
    let p = Pipeline::start(|e| with(&e, "JOB_MAX_ATTEMPTS", "2")).await;
    p.fake
        .fail_next(Endpoint::Messages, Failure::buc_throttle(3));
    p.fake
        .fail_next(Endpoint::Messages, Failure::custom_limit());
    p.fake
        .fail_next(Endpoint::Messages, Failure::too_many_requests());
    p.push(p.dm("5550003", "mid-storm", "Oi", now_ms())).await;
    p.push(p.dm("5550004", "mid-other", "Olá", now_ms())).await;
    let sent = p.sends(2, Duration::from_secs(20)).await;
    assert_eq!(
        sent.len(),
        2,
        "both customers answered once the storm passed"
    );
    let mut recipients: Vec<&str> = sent.iter().map(|s| s.recipient_id.as_str()).collect();
    recipients.sort_unstable();
    assert_eq!(recipients, ["5550003", "5550004"]);
    assert!(
        p.dead("send_message", 1, Duration::from_millis(200))
            .await
            .is_empty(),
        "DLQ empty"
    );
    // Every call after a throttle came at least the pause later: the merchant's other sends
    // waited too.
    let calls: Vec<Instant> = p
        .fake
        .requests_to(Endpoint::Messages)
        .iter()
        .map(|r| r.at)
        .collect();
    assert!(calls.len() >= 4, "{} calls", calls.len());
    // The first three calls were throttled; after each, no call for the merchant until the
    // pause (1 s here) was over. Calls racing the throttled one by a few ms are not "during".
    for throttled in &calls[..3] {
        let during = calls
            .iter()
            .filter(|c| {
                **c > *throttled + Duration::from_millis(50)
                    && **c < *throttled + Duration::from_millis(900)
            })
            .count();
        assert_eq!(during, 0, "a call during the merchant's pause");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_wide_throttle_pauses_every_merchants_calls() {
    let p = Pipeline::start(|e| e).await;
    // A second shop with its own account: Meta's app limit (code 4) counts its calls too.
    let other = FakeAccount {
        user_id: "17841400000000888".into(),
        app_scoped_id: "27640875392278888".into(),
        username: "lojaverde".into(),
    };
    let token = p.fake.issue_long_lived_token(&other);
    let other_merchant = MerchantId::new_random();
    let vault = Vault::new(&parse_key_ring(&key_entry(1, 1)).expect("ring"));
    let products = [product("MUG-RED", "Caneca vermelha", "29.90", 5)];
    let shop = Shop {
        name: "Loja Verde",
        persona: Some(PERSONA),
        products: &products,
        account: Some(Account {
            username: "lojaverde",
            ..Account::new(&vault, &other.user_id, &token)
        }),
    };
    shops::seed(&p.db.app_db(1).await, other_merchant, &shop)
        .await
        .expect("seed");

    p.fake.fail_next(Endpoint::Messages, Failure::app_limit());
    p.push(p.dm("5550041", "mid-app-limit", "Oi", now_ms()))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.fake.requests_to(Endpoint::Messages).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let throttled_at = p.fake.requests_to(Endpoint::Messages)[0].at;
    // The pause is the app's, not the merchant's (set once the worker has Meta's answer).
    let mut redis = p.conn().await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut app_paused = false;
    while !app_paused && Instant::now() < deadline {
        app_paused = redis.exists("graph:pause:app").await.expect("exists");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let merchant_paused: bool = redis
        .exists(format!("graph:pause:{}", p.merchant))
        .await
        .expect("exists");
    assert!(
        app_paused && !merchant_paused,
        "app {app_paused} merchant {merchant_paused}"
    );
    // The other merchant's customer writes now: its send waits out the app's pause.
    let mut dm = p.dm("5550042", "mid-other-shop", "Olá", now_ms());
    dm.merchant_id = other_merchant.0;
    dm.instagram_account_id = other.user_id.clone();
    dm.event = serde_json::value::RawValue::from_string(
        wh::text_message("5550042", &other.user_id, "mid-other-shop", "Olá", now_ms()).to_string(),
    )
    .expect("raw");
    p.push(dm).await;
    let sent = p.sends(2, Duration::from_secs(20)).await;
    assert_eq!(
        sent.len(),
        2,
        "both merchants answered once the pause ended"
    );
    let calls = p.fake.requests_to(Endpoint::Messages);
    let other_calls: Vec<Instant> = calls
        .iter()
        .filter(|c| c.body.contains("5550042"))
        .map(|c| c.at)
        .collect();
    assert!(!other_calls.is_empty(), "the other merchant was answered");
    for at in other_calls {
        assert!(
            at > throttled_at + Duration::from_millis(900),
            "a call of the other merchant during the app's pause"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_forever_end_in_one_exhausted_dead_letter_and_replay_sends_once() {
    let p = Pipeline::start(|e| e).await;
    p.fake
        .fail_always(Endpoint::Messages, Failure::server_error(500));
    p.push(p.dm("5550005", "mid-500", "Oi", now_ms())).await;
    let dead = p.dead("send_message", 1, Duration::from_secs(15)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].reason, dead[0].attempts),
        (DeadReason::Exhausted, 3)
    );
    assert_eq!(p.fake.requests_to(Endpoint::Messages).len(), 3);
    assert!(p.fake.sent_messages().is_empty());
    p.fake.clear_failures();
    run(
        BIN,
        &["dlq", "replay", "--queue", "send_message", "--all"],
        &[("REDIS_URL", p.redis.url())],
    )
    .assert_code(0);
    assert_eq!(p.sends(1, Duration::from_secs(10)).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(p.fake.sent_messages().len(), 1);
    assert!(p.dead("send_message", 1, Duration::ZERO).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_outcomes_wait_for_the_echo_retry_once_then_give_up_as_send_unknown() {
    let p = Pipeline::start(|e| e).await;
    // 1. Timed out after Meta took it; the echo arrives: no second send.
    p.fake.fail_next(
        Endpoint::Messages,
        Failure::hang(Duration::from_millis(1500)),
    );
    p.push(p.dm("5550006", "mid-echoed", "Oi", now_ms())).await;
    let sent = p.sends(1, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    p.push(p.echo(
        "5550006",
        &sent[0].message_id,
        sent[0].text.as_deref().expect("text"),
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        p.fake.requests_to(Endpoint::Messages).len(),
        1,
        "confirmed by the echo: no retry"
    );
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM outbound_messages WHERE status = 'sent'")
            .await,
        1
    );
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM conversations WHERE paused_until IS NOT NULL")
            .await,
        0,
        "our own echo is no takeover"
    );

    // 2. Timed out, no echo: one retry.
    p.fake.fail_next(
        Endpoint::Messages,
        Failure::hang(Duration::from_millis(1500)),
    );
    p.push(p.dm("5550007", "mid-retried", "Oi", now_ms())).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.fake.requests_to(Endpoint::Messages).len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        p.fake.requests_to(Endpoint::Messages).len(),
        3,
        "exactly one retry"
    );

    // 3. Two unknown outcomes in a row: send_unknown, never a third try.
    p.fake.fail_next(
        Endpoint::Messages,
        Failure::hang(Duration::from_millis(1500)),
    );
    p.fake.fail_next(
        Endpoint::Messages,
        Failure::hang(Duration::from_millis(1500)),
    );
    p.push(p.dm("5550008", "mid-unknown", "Oi", now_ms())).await;
    let dead = p.dead("send_message", 1, Duration::from_secs(15)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, DeadReason::SendUnknown);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(p.fake.requests_to(Endpoint::Messages).len(), 5);
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM outbound_messages WHERE status = 'send_unknown'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reauth_and_window_errors_are_dead_letters_without_retry_and_old_messages_skip_the_model() {
    let p = Pipeline::start(|e| e).await;
    p.fake
        .fail_next(Endpoint::Messages, Failure::outside_window());
    p.push(p.dm("5550009", "mid-window", "Oi", now_ms())).await;
    let dead = p.dead("send_message", 1, Duration::from_secs(10)).await;
    assert_eq!(
        (dead[0].reason, dead[0].attempts),
        (DeadReason::WindowExpired, 1)
    );

    // A message older than 24 hours: no model call, nothing sent.
    let calls = p.llm.request_count();
    p.push(p.dm("5550010", "mid-old", "Oi", now_ms() - 25 * 3600 * 1000))
        .await;
    let dead = p.dead("inbound_event", 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, DeadReason::WindowExpired);
    assert_eq!(
        p.llm.request_count(),
        calls,
        "no model call for the old message"
    );

    p.fake
        .fail_next(Endpoint::Messages, Failure::token_expired());
    p.push(p.dm("5550011", "mid-190", "Oi", now_ms())).await;
    let dead = p.dead("send_message", 2, Duration::from_secs(10)).await;
    let reauth = dead
        .iter()
        .find(|d| d.reason == DeadReason::NeedsReauth)
        .expect("needs_reauth record");
    assert_eq!(reauth.attempts, 1);
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM instagram_accounts WHERE needs_reauth")
            .await,
        1
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        p.fake.requests_to(Endpoint::Messages).len(),
        2,
        "no retry of either"
    );
    assert!(p.fake.sent_messages().is_empty());

    // The owner reconnected (a new token clears the flag).
    use diesel_async::SimpleAsyncConnection;
    p.db.superuser_conn()
        .await
        .batch_execute("UPDATE instagram_accounts SET needs_reauth = false")
        .await
        .expect("reconnect");
    // The model refuses the request for good: the job is a dead letter, but the customer's
    // message is stored, its event left unprocessed so that a replay answers it.
    p.llm.fail_next(LlmFailure::ContextLength);
    p.push(p.dm("5550012", "mid-refused", "Oi", now_ms())).await;
    let dead = p.dead("inbound_event", 2, Duration::from_secs(10)).await;
    assert!(
        dead.iter().any(|d| d.reason == DeadReason::Permanent),
        "{dead:?}"
    );
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM messages WHERE mid = 'mid-refused'")
            .await,
        1
    );
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM webhook_events WHERE event_id = 'message:mid-refused' AND processed_at IS NULL")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_human_reply_pauses_the_assistant_and_a_request_for_a_person_hands_off_once() {
    let p = Pipeline::start(|e| e).await;
    // Someone answered from the Instagram app.
    p.push(p.echo("5550012", "mid-human", "Oi, aqui é a Ana da loja!"))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while p
        .sql_count("SELECT count(*) AS n FROM conversations WHERE paused_until > now()")
        .await
        < 1
    {
        assert!(Instant::now() < deadline, "no takeover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.push(p.dm("5550012", "mid-after-human", "Obrigado!", now_ms()))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        p.fake.sent_messages().is_empty(),
        "the assistant stays quiet"
    );
    assert_eq!(p.llm.request_count(), 0);

    // A customer asks for a person: flagged, one hand-off message.
    p.push(p.dm(
        "5550013",
        "mid-human-please",
        "quero falar com um atendente",
        now_ms(),
    ))
    .await;
    let sent = p.sends(1, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].text.as_deref().expect("text").contains("team"),
        "the default hand-off message"
    );
    p.push(p.dm("5550013", "mid-human-again", "alô? atendente?", now_ms()))
        .await;
    p.push(p.dm("5550013", "mid-question", "tem bolsa azul?", now_ms()))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        p.fake.sent_messages().len(),
        1,
        "hand-off once, then silence"
    );
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM conversations WHERE needs_human")
            .await,
        1
    );
    assert_eq!(
        p.llm.request_count(),
        0,
        "no model call while a person is needed"
    );

    run(
        BIN,
        &[
            "conversation",
            "resume",
            "--merchant",
            &p.merchant.to_string(),
            "--customer",
            "5550013",
        ],
        &[("DATABASE_URL", p.db.app_url())],
    )
    .assert_code(0);
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM conversations WHERE needs_human")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_sweeping_refresh_each_due_account_once_per_tick() {
    let p = Pipeline::start(|e| with(&e, "TOKEN_REFRESH_CRON", "*/2 * * * * *")).await;
    let second_env = base_env(&p.db, &p.redis, &p.fake, &p.llm);
    let _second = worker_env::start(
        BIN,
        &with(&second_env, "TOKEN_REFRESH_CRON", "*/2 * * * * *"),
    );
    // Due: last refreshed two days ago, expiring within the window.
    use diesel_async::SimpleAsyncConnection;
    p.db.superuser_conn()
        .await
        .batch_execute("UPDATE instagram_accounts SET token_refreshed_at = now() - interval '2 days', connected_at = now() - interval '9 days', token_expires_at = now() + interval '3 days'")
        .await
        .expect("make due");
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert_eq!(
        p.fake.requests_to(Endpoint::Refresh).len(),
        1,
        "one refresh for the due account"
    );
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM instagram_accounts WHERE token_expires_at > now() + interval '59 days' AND token_ciphertext LIKE 'v1:%'").await,
        1,
        "the new token is stored encrypted with its new expiry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_token_refresh_pauses_the_merchant_like_a_throttled_send() {
    // 613 counts one account (a code-4 throttle would pause the whole app instead).
    let p = Pipeline::start(|e| e).await;
    // A second process: the pause one worker sets holds the other's sends too.
    let _second = p.another_worker();
    use diesel_async::SimpleAsyncConnection;
    p.db.superuser_conn()
        .await
        .batch_execute("UPDATE instagram_accounts SET token_refreshed_at = now() - interval '2 days', connected_at = now() - interval '9 days'")
        .await
        .expect("make the token refreshable");
    p.fake.fail_next(Endpoint::Refresh, Failure::custom_limit());
    JobQueue::<igsales_jobs::RefreshTokenV1>::new(p.conn().await)
        .push(igsales_jobs::RefreshTokenV1 {
            merchant_id: p.merchant.0,
            instagram_account_id: p.account.clone(),
            delivery: Default::default(),
        })
        .await
        .expect("push");
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.fake.requests_to(Endpoint::Refresh).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Meta throttled the refresh: the merchant is paused in Redis, as a throttled send pauses it
    // (for 1 s here, so it is looked for as soon as the worker has the answer).
    let mut redis = p.conn().await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut paused = false;
    while !paused && Instant::now() < deadline {
        paused = redis
            .exists(format!("graph:pause:{}", p.merchant))
            .await
            .expect("exists");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(paused, "the throttled refresh paused the merchant");
    p.push(p.dm("5550031", "mid-after-throttle", "Oi", now_ms()))
        .await;
    let sent = p.sends(1, Duration::from_secs(15)).await;
    assert_eq!(sent.len(), 1);
    let throttled_at = p.fake.requests_to(Endpoint::Refresh)[0].at;
    let sent_at = p.fake.requests_to(Endpoint::Messages)[0].at;
    assert!(
        sent_at > throttled_at + Duration::from_millis(900),
        "the send waited out the merchant's pause"
    );
    // The refresh waited the pause (GRAPH_THROTTLE_WAIT_SECS, 1 s here), not a fixed minute.
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.fake.requests_to(Endpoint::Refresh).len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(p.fake.requests_to(Endpoint::Refresh).len(), 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && p.sql_count("SELECT count(*) AS n FROM instagram_accounts WHERE token_expires_at > now() + interval '59 days'").await == 0
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM instagram_accounts WHERE token_expires_at > now() + interval '59 days'").await,
        1,
        "the second try renewed the token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_copies_of_one_part_running_at_once_in_two_workers_call_graph_once() {
    let p = Pipeline::start(|e| with(&e, "WORKER_CONCURRENCY", "16")).await;
    let _second = p.another_worker();
    // Four answered DMs, then every part made `pending` again, as a redelivery, an orphan
    // re-run or a replay would find it.
    let customers: Vec<String> = (0..4).map(|i| format!("555090{i}")).collect();
    for (i, customer) in customers.iter().enumerate() {
        p.push(p.dm(customer, &format!("mid-copies-{i}"), "Oi", now_ms()))
            .await;
    }
    assert_eq!(p.sends(4, Duration::from_secs(10)).await.len(), 4);
    use diesel_async::SimpleAsyncConnection;
    p.db.superuser_conn()
        .await
        .batch_execute("UPDATE outbound_messages SET status = 'pending', send_attempts = 0, meta_message_id = NULL, sending_started_at = NULL")
        .await
        .expect("make the parts pending");
    p.fake.clear_requests();

    let jobs: Vec<SendMessageV1> = customers
        .iter()
        .enumerate()
        .map(|(i, customer)| SendMessageV1 {
            merchant_id: p.merchant.0,
            instagram_account_id: p.account.clone(),
            recipient_igsid: customer.clone(),
            idempotency_key: format!("message:mid-copies-{i}#0"),
            window_closes_at: Utc::now() + chrono::Duration::hours(1),
            delivery: Default::default(),
            channel: Default::default(),
        })
        .collect();
    // 8 copies of each part in one pipelined burst, so both workers fetch them together.
    let queue = JobQueue::<SendMessageV1>::new(p.conn().await);
    let pushes = (0..8).flat_map(|_| jobs.iter().cloned()).map(|j| {
        let q = queue.clone();
        async move { q.push(j).await }
    });
    for r in futures::future::join_all(pushes).await {
        r.expect("push");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.fake.requests_to(Endpoint::Messages).len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The losers saw `sending`: they wait out ECHO_CONFIRM_SECS (2 s), then find `sent`.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut recipients: Vec<String> = p
        .fake
        .sent_messages()
        .iter()
        .skip(4)
        .map(|s| s.recipient_id.clone())
        .collect();
    recipients.sort();
    assert_eq!(recipients, customers, "exactly one Graph send per part");
    assert_eq!(p.fake.requests_to(Endpoint::Messages).len(), 4);
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM outbound_messages WHERE status = 'sent' AND send_attempts = 1")
            .await,
        4
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_send_whose_answer_is_cut_or_garbled_waits_for_the_echo_instead_of_sending_again() {
    let p = Pipeline::start(|e| e).await;
    for (i, failure) in [Failure::cut_body(), Failure::garbled_body()]
        .into_iter()
        .enumerate()
    {
        let customer = format!("555070{i}");
        p.fake.fail_next(Endpoint::Messages, failure);
        p.push(p.dm(&customer, &format!("mid-lost-answer-{i}"), "Oi", now_ms()))
            .await;
        let sent = p.sends(i + 1, Duration::from_secs(10)).await;
        assert_eq!(sent.len(), i + 1);
        // Inside ECHO_CONFIRM_SECS (2 s) nothing is repeated: Meta took the message.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(p.fake.requests_to(Endpoint::Messages).len(), i + 1);
        let last = sent.last().expect("sent");
        p.push(p.echo(
            &customer,
            &last.message_id,
            last.text.as_deref().expect("text"),
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            p.fake.requests_to(Endpoint::Messages).len(),
            i + 1,
            "confirmed by the echo: sent once"
        );
    }
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM outbound_messages WHERE status = 'sent' AND send_attempts = 1")
            .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_multibyte_handoff_message_over_one_message_still_reaches_the_customer() {
    let p = Pipeline::start(|e| e).await;
    // 600 characters, 1200 bytes: within the column's character check, over one message.
    use diesel_async::SimpleAsyncConnection;
    let long = "é".repeat(600);
    p.db.superuser_conn()
        .await
        .batch_execute(&format!("UPDATE merchants SET handoff_message = '{long}'"))
        .await
        .expect("store a long hand-off message");
    p.push(p.dm(
        "5550801",
        "mid-person",
        "Quero falar com um atendente",
        now_ms(),
    ))
    .await;
    let sent = p.sends(2, Duration::from_secs(10)).await;
    let texts: Vec<&str> = sent.iter().filter_map(|s| s.text.as_deref()).collect();
    assert_eq!(texts.concat(), long, "the whole hand-off message, in parts");
    assert!(texts.iter().all(|t| t.len() <= 1000));
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM conversations WHERE needs_human")
            .await,
        1
    );
    assert_eq!(p.llm.request_count(), 0, "no model call for a hand-off");
}

/// Three ≤ 1000-byte parts (the fake model answers this text verbatim).
fn three_parts() -> String {
    "palavra ".repeat(300)
}

#[tokio::test(flavor = "multi_thread")]
async fn when_a_part_dies_the_parts_after_it_die_with_it_for_the_same_reason() {
    let p = Pipeline::start(|e| with(&e, "OPENAI_MAX_TOKENS", "600")).await;
    // Refused for good: one Graph call, three dead letters, all `permanent`.
    p.fake.fail_next(
        Endpoint::Messages,
        Failure::graph(400, 100, Some(2534014), "No matching user found"),
    );
    p.llm.reply_next(three_parts());
    p.push(p.dm("5550901", "mid-dead-first", "Me conta tudo", now_ms()))
        .await;
    let dead = p.dead("send_message", 3, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(
        dead.iter().all(|d| d.reason == DeadReason::Permanent),
        "{dead:?}"
    );
    assert_eq!(p.fake.requests_to(Endpoint::Messages).len(), 1);

    // Out of attempts on 5xx: the first part is `exhausted`, and so are the two after it.
    let _: () = p.conn().await.del("dlq:send_message").await.expect("del");
    p.fake
        .fail_always(Endpoint::Messages, Failure::server_error(503));
    p.llm.reply_next(three_parts());
    p.push(p.dm("5550902", "mid-exhausted-first", "Me conta tudo", now_ms()))
        .await;
    let dead = p.dead("send_message", 3, Duration::from_secs(15)).await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(
        dead.iter().all(|d| d.reason == DeadReason::Exhausted),
        "{dead:?}"
    );
    // JOB_MAX_ATTEMPTS=3 calls for the first part; none for the others.
    assert_eq!(p.fake.requests_to(Endpoint::Messages).len(), 1 + 3);
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM outbound_messages WHERE status = 'failed'")
            .await,
        6
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_needing_reauthorisation_gets_no_model_call_and_no_graph_call() {
    let p = Pipeline::start(|e| with(&e, "OPENAI_MAX_TOKENS", "600")).await;
    // A 190 on the first of three parts: the account is flagged, the other two parts go to
    // the dead letters as `needs_reauth` without calling Graph.
    p.fake
        .fail_next(Endpoint::Messages, Failure::token_expired());
    p.llm.reply_next(three_parts());
    p.push(p.dm("5550911", "mid-reauth-1", "Me conta tudo", now_ms()))
        .await;
    let dead = p.dead("send_message", 3, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(
        dead.iter().all(|d| d.reason == DeadReason::NeedsReauth),
        "{dead:?}"
    );
    assert_eq!(p.fake.requests_to(Endpoint::Messages).len(), 1);

    // A queued part of the flagged account: dead at once, no call.
    let job = SendMessageV1 {
        merchant_id: p.merchant.0,
        instagram_account_id: p.account.clone(),
        recipient_igsid: "5550911".into(),
        idempotency_key: "message:mid-reauth-1#0".into(),
        window_closes_at: Utc::now() + chrono::Duration::hours(1),
        delivery: Default::default(),
        channel: Default::default(),
    };
    JobQueue::<SendMessageV1>::new(p.conn().await)
        .push(job)
        .await
        .expect("push");
    let dead = p.dead("send_message", 4, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 4);
    assert_eq!(dead[0].reason, DeadReason::NeedsReauth);

    // A new customer message: kept, not answered, no model call, dead-lettered for a replay.
    let calls = p.llm.request_count();
    p.push(p.dm("5550912", "mid-reauth-2", "Oi", now_ms()))
        .await;
    let dead = p.dead("inbound_event", 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, DeadReason::NeedsReauth);
    assert_eq!(p.llm.request_count(), calls, "no model call");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        p.fake.requests_to(Endpoint::Messages).len(),
        1,
        "no Graph call"
    );
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM webhook_events WHERE event_id = 'message:mid-reauth-2' AND processed_at IS NULL")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_outage_is_waited_out_without_dead_letters_or_a_second_model_call() {
    use igsales_tests::proxy::{Proxy, target, through};
    let proxy = Proxy::start(target(&igsales_tests::db::server())).await;
    let addr = proxy.addr();
    let p = Pipeline::start(|e| {
        let url = e
            .iter()
            .find(|(k, _)| *k == "DATABASE_URL")
            .map(|(_, v)| v.clone())
            .expect("DATABASE_URL");
        worker_env::with_all(
            &e,
            &[
                ("DATABASE_URL", &through(&url, addr)),
                ("DATABASE_CONNECT_TIMEOUT_MS", "300"),
                ("JOB_UNAVAILABLE_WAIT_MS", "200"),
            ],
        )
    })
    .await;

    // 1. Down before the messages arrive, for far longer than 3 attempts' backoff (50–200 ms).
    proxy.cut();
    for i in 0..5 {
        p.push(p.dm(
            &format!("555100{i}"),
            &format!("mid-outage-{i}"),
            "Oi",
            now_ms(),
        ))
        .await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(p.fake.sent_count(), 0);
    proxy.restore().await;
    assert_eq!(p.sends(5, Duration::from_secs(15)).await.len(), 5);
    assert_eq!(p.llm.request_count(), 5);

    // 2. Down while the model answers: the store fails, the answer is kept, and the run after
    // the outage stores and sends it without asking the model again.
    p.llm.set_latency(Duration::from_millis(1200));
    p.push(p.dm("5551010", "mid-outage-store", "Oi", now_ms()))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.llm.request_count() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore().await;
    assert_eq!(p.sends(6, Duration::from_secs(15)).await.len(), 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        p.llm.request_count(),
        6,
        "the model was paid once per message"
    );
    assert_eq!(p.fake.sent_count(), 6, "one reply each");
    for queue in ["inbound_event", "send_message"] {
        assert!(p.dead(queue, 0, Duration::ZERO).await.is_empty(), "{queue}");
    }
    let kept: Vec<String> = p.conn().await.keys("kept_answer:*").await.expect("keys");
    assert!(
        kept.is_empty(),
        "a kept answer is dropped once stored: {kept:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_refusing_structured_output_or_breaking_it_still_gets_a_plain_text_answer_out() {
    let p = Pipeline::with_cards(|e| e).await;
    p.llm.refuse_structured(true);
    p.push(p.dm("5551001", "mid-refused", "Tem a bolsa azul?", now_ms()))
        .await;
    let sent = p.sends_to("5551001", 1, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 1);
    let text = sent[0]["text"].as_str().expect("text");
    assert!(
        text.contains("Bolsa azul") && text.contains("89.9"),
        "{text}"
    );
    let asked = p.llm.requests();
    assert_eq!(asked.len(), 2, "the structured ask, then the plain one");
    assert!(asked[0].response_format.is_some() && asked[1].response_format.is_none());
    assert!(
        asked[0]
            .last("system")
            .expect("system")
            .contains("JSON object of the response format")
            && !asked[1]
                .last("system")
                .expect("system")
                .contains("JSON object"),
        "the plain ask has plain instructions"
    );
    assert_eq!(
        p.metric(
            "igsales_llm_structured_fallback_total",
            "reason=\"refused\""
        )
        .await,
        1.0
    );

    // Content that is JSON but not the structure: asked again in plain text.
    p.llm.refuse_structured(false);
    p.llm.misbehave_next(Misbehave::BrokenJson);
    p.push(p.dm("5551002", "mid-broken", "Tem a bolsa azul?", now_ms()))
        .await;
    let sent = p.sends_to("5551002", 1, Duration::from_secs(10)).await;
    assert!(
        sent[0]["text"]
            .as_str()
            .expect("text")
            .contains("Bolsa azul")
    );
    assert_eq!(p.llm.requests().len(), 4);
    assert_eq!(
        p.metric(
            "igsales_llm_structured_fallback_total",
            "reason=\"invalid_json\""
        )
        .await,
        1.0
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        p.fake.sent_messages().len(),
        2,
        "text only: no cards without the structure"
    );

    // The structure again: text, then the card.
    p.push(p.dm("5551003", "mid-structured", "Tem a bolsa azul?", now_ms()))
        .await;
    let sent = p.sends_to("5551003", 2, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[1]["attachment"]["payload"]["elements"][0]["title"],
        "Bolsa azul"
    );
}

/// The subtitle of the first card in `sent`, if any.
fn card_subtitle(sent: &[serde_json::Value]) -> Option<String> {
    sent.iter()
        .find_map(|m| m["attachment"]["payload"]["elements"][0]["subtitle"].as_str())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_price_guard_asks_again_then_sends_without_the_wrong_figures() {
    let p = Pipeline::with_cards(|e| e).await;
    // An invented price once: the second ask is told, and its answer goes out.
    p.llm.misbehave_next(Misbehave::InventPrice);
    p.push(p.dm("5552001", "mid-invent-1", "Tem a bolsa azul?", now_ms()))
        .await;
    let sent = p.sends_to("5552001", 2, Duration::from_secs(10)).await;
    let text = sent[0]["text"].as_str().expect("text");
    assert!(text.contains("89.9") && !text.contains("96.90"), "{text}");
    let asked = p.llm.requests();
    assert_eq!(asked.len(), 2);
    let note = asked[1].last("system").expect("the problem, stated");
    assert!(
        note.contains("\"96.90 BRL\" is not the catalog price (Bolsa azul costs R$ 89,90)"),
        "{note}"
    );
    assert_eq!(
        p.metric("igsales_reply_guard_total", "outcome=\"retried_ok\"")
            .await,
        1.0
    );

    // Invented twice: the text goes without it; the card shows the catalog's price.
    for how in [Misbehave::InventPrice, Misbehave::InventPrice] {
        p.llm.misbehave_next(how);
    }
    p.push(p.dm("5552002", "mid-invent-2", "Tem a bolsa azul?", now_ms()))
        .await;
    let sent = p.sends_to("5552002", 2, Duration::from_secs(10)).await;
    let text = sent[0]["text"].as_str().expect("text");
    assert!(!text.contains("96.90") && !text.is_empty(), "{text}");
    assert!(
        text.contains("Good news!"),
        "the other sentences stay: {text}"
    );
    assert_eq!(
        card_subtitle(&sent).as_deref(),
        Some("R$ 89,90 · Em estoque")
    );

    // Another product's price, twice: gone from the text too.
    for how in [Misbehave::OtherPrice, Misbehave::OtherPrice] {
        p.llm.misbehave_next(how);
    }
    p.push(p.dm("5552003", "mid-other", "Tem a bolsa azul?", now_ms()))
        .await;
    let sent = p.sends_to("5552003", 2, Duration::from_secs(10)).await;
    let text = sent[0]["text"].as_str().expect("text");
    assert!(!text.contains("49.9"), "{text}");
    assert_eq!(
        card_subtitle(&sent).as_deref(),
        Some("R$ 89,90 · Em estoque")
    );

    // A SKU that does not exist, twice: its card is left out, the real one goes.
    for how in [Misbehave::UnknownSku, Misbehave::UnknownSku] {
        p.llm.misbehave_next(how);
    }
    p.push(p.dm("5552004", "mid-sku", "Tem a bolsa azul?", now_ms()))
        .await;
    let sent = p.sends_to("5552004", 2, Duration::from_secs(10)).await;
    let elements = sent[1]["attachment"]["payload"]["elements"]
        .as_array()
        .expect("cards");
    assert_eq!(elements.len(), 1);
    assert_eq!(elements[0]["title"], "Bolsa azul");
    assert!(!sent.iter().any(|m| m.to_string().contains(UNKNOWN_SKU)));

    assert_eq!(
        p.llm.requests().len(),
        2 + 3 * 2,
        "one second ask per bad answer"
    );
    assert_eq!(
        p.metric("igsales_reply_guard_total", "outcome=\"stripped\"")
            .await,
        3.0
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        p.fake.sent_messages().len(),
        8,
        "text and card for each of four DMs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_copies_of_one_inbound_job_at_once_send_the_text_and_the_card_once_each() {
    let p = Pipeline::with_cards(|e| with(&e, "WORKER_CONCURRENCY", "16")).await;
    let _second = p.another_worker();
    p.llm.set_latency(Duration::from_millis(300));
    let dm = p.dm("5553001", "mid-copies", "Tem a bolsa azul?", now_ms());
    let queue = JobQueue::<InboundEventV1>::new(p.conn().await);
    let (q1, q2) = (queue.clone(), queue);
    let (a, b) = futures::join!(q1.push(dm.clone()), q2.push(dm));
    a.expect("push");
    b.expect("push");
    let sent = p.sends_to("5553001", 2, Duration::from_secs(15)).await;
    assert_eq!(sent.len(), 2);
    assert!(sent[0]["text"].is_string(), "text first");
    assert_eq!(sent[1]["attachment"]["type"], "template", "then the card");
    // Long enough for a second copy to have sent anything it was going to.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(p.fake.sent_messages().len(), 2);
    assert_eq!(p.llm.request_count(), 1, "one model call");
    assert_eq!(
        p.sql_count("SELECT count(*) AS n FROM outbound_messages WHERE status = 'sent' AND send_attempts = 1")
            .await,
        2
    );
}
