//! The acceptance suite: the real `ingress` and `worker` binaries as processes, real Postgres and
//! Redis, the fake Meta (which echoes sends back, as Meta does) and the fake LLM.
//! Run alone with `cargo build --bin ingress --bin worker && cargo test -p igsales-tests --test acceptance`.

use std::time::Duration;

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use igsales_schema::{DbError, MerchantId};
use igsales_tests::fake_meta::{Endpoint, Failure, webhook as wh};
use igsales_tests::http;
use igsales_tests::stack::{ADMIN_TOKEN, IG_SECRET, Stack, StackConfig};
use igsales_tests::{PrivateRedis, TestDb, TestRedis};

const CUSTOMER: &str = "1177009998887776";

async fn stack(db: &TestDb, redis_url: String) -> Stack {
    stack_with(db, redis_url, vec![]).await
}

/// The suite's stack with `extra` worker settings on top of its short waits.
async fn stack_with(db: &TestDb, redis_url: String, extra: Vec<(&'static str, String)>) -> Stack {
    let mut worker_env = vec![
        ("GRAPH_THROTTLE_WAIT_SECS", "1".into()),
        ("GRAPH_MAX_PAUSE_SECS", "1".into()),
        ("JOB_BACKOFF_BASE_MS", "50".into()),
        ("JOB_BACKOFF_MAX_MS", "200".into()),
        ("ECHO_CONFIRM_SECS", "2".into()),
    ];
    worker_env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    worker_env.extend(extra);
    Stack::start(StackConfig {
        database_url: db.app_url(),
        redis_url,
        model: None,
        worker_env,
    })
    .await
    .expect("stack")
}

/// A merchant with the demo catalog and its account connected through the real OAuth flow.
async fn shop(s: &Stack) -> MerchantId {
    let merchant = s
        .worker_cli(&["merchant", "create", "--name", "Loja Azul"])
        .expect("merchant")
        .trim()
        .to_owned();
    let catalog = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo-catalog.csv");
    s.worker_cli(&["catalog", "import", "--merchant", &merchant, catalog])
        .expect("catalog");
    let redirect = s.connect_account(&merchant).await.expect("connect flow");
    assert!(
        redirect.contains(&format!("merchant_id={merchant}")),
        "{redirect}"
    );
    assert!(
        redirect.contains("instagram_username=lojaazul"),
        "{redirect}"
    );
    merchant.parse().expect("uuid")
}

#[tokio::test(flavor = "multi_thread")]
async fn pkce_connect_then_a_dm_gets_one_answer_even_when_meta_replays_it() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let s = stack(&db, redis.url()).await;
    let merchant = shop(&s).await;
    // PKCE: Instagram got the verifier matching the challenge it saw at authorize time.
    let authorize = &s.fake.requests_to(Endpoint::Authorize)[0];
    let exchange = &s.fake.requests_to(Endpoint::CodeExchange)[0];
    let verifier = exchange.form_field("code_verifier").expect("verifier");
    use base64::Engine as _;
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
    assert_eq!(
        authorize.query_param("code_challenge"),
        Some(challenge.as_str())
    );

    // The account is listed, without its token.
    let listed = http::get(
        format!("{}/v1/merchants/{merchant}/instagram", s.base),
        vec![("Authorization".into(), format!("Bearer {ADMIN_TOKEN}"))],
    )
    .await;
    assert_eq!(listed.status, 200, "list: {}", listed.body);
    let body = listed.body;
    assert!(
        body.contains("\"username\":\"lojaazul\"") && !body.contains("IGAA"),
        "{body}"
    );

    // A DM is answered once, from the catalog…
    let now = chrono::Utc::now().timestamp_millis();
    let dm = wh::envelope(&[wh::messaging_entry(
        &s.account.user_id,
        now,
        vec![wh::text_message(
            CUSTOMER,
            &s.account.user_id,
            "mid-accept-1",
            "How much is the ceramic mug?",
            now,
        )],
    )]);
    let url = format!("{}/webhooks/instagram", s.base);
    let (u, b) = (url.clone(), dm.clone());
    assert_eq!(
        tokio::task::spawn_blocking(move || wh::deliver(&u, IG_SECRET, &b))
            .await
            .expect("join")
            .0,
        200
    );
    let reply = s
        .next_reply(CUSTOMER, 0, Duration::from_secs(20))
        .await
        .expect("a reply");
    assert!(
        reply.contains("Ceramic mug") && reply.contains("35"),
        "{reply}"
    );
    // …and Meta redelivering the very same body changes nothing.
    let (u, b) = (url, dm);
    assert_eq!(
        tokio::task::spawn_blocking(move || wh::deliver(&u, IG_SECRET, &b))
            .await
            .expect("join")
            .0,
        200
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.replies_to(CUSTOMER),
        1,
        "a replayed webhook is answered once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_and_429_are_waited_out_and_the_answer_goes_out_once() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let s = stack(&db, redis.url()).await;
    shop(&s).await;
    s.fake
        .fail_next(Endpoint::Messages, Failure::too_many_requests());
    s.fake
        .fail_next(Endpoint::Messages, Failure::buc_throttle(1));
    assert_eq!(
        s.send_dm(CUSTOMER, "Do you have the denim cap?")
            .await
            .expect("dm"),
        200
    );
    let reply = s
        .next_reply(CUSTOMER, 0, Duration::from_secs(25))
        .await
        .expect("a reply after the throttles");
    assert!(reply.contains("Denim cap"), "{reply}");
    let all = s.messages_after(CUSTOMER, 1, Duration::from_secs(10)).await;
    assert_eq!(all.len(), 2, "the text, then the cap's card: {all:#?}");
    assert_eq!(
        s.fake.requests_to(Endpoint::Messages).len(),
        4,
        "two throttled calls, then the text and the product's card"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.replies_to(CUSTOMER), 1);
    let mut c = redis.connection().await;
    let dead: i64 = redis::cmd("LLEN")
        .arg("dlq:send_message")
        .query_async(&mut c)
        .await
        .expect("llen");
    assert_eq!(dead, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_down_the_webhook_is_refused_and_meta_s_retry_is_answered_once() {
    let db = TestDb::migrated().await;
    let mut private = PrivateRedis::start();
    let s = stack(&db, private.url()).await;
    shop(&s).await;
    let now = chrono::Utc::now().timestamp_millis();
    let dm = wh::envelope(&[wh::messaging_entry(
        &s.account.user_id,
        now,
        vec![wh::text_message(
            CUSTOMER,
            &s.account.user_id,
            "mid-outage",
            "Is the black tee available?",
            now,
        )],
    )]);
    let url = format!("{}/webhooks/instagram", s.base);
    private.stop();
    let (u, b) = (url.clone(), dm.clone());
    let (status, _) = tokio::task::spawn_blocking(move || wh::deliver(&u, IG_SECRET, &b))
        .await
        .expect("join");
    assert_eq!(status, 503, "not acknowledged while Redis is down");
    private.restart();
    let mut status = 0;
    for _ in 0..60 {
        let (u, b) = (url.clone(), dm.clone());
        status = tokio::task::spawn_blocking(move || wh::deliver(&u, IG_SECRET, &b))
            .await
            .expect("join")
            .0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(status, 200);
    let reply = s
        .next_reply(CUSTOMER, 0, Duration::from_secs(30))
        .await
        .expect("answered after the outage");
    assert!(reply.contains("Black cotton tee"), "{reply}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.replies_to(CUSTOMER), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_merchant_never_sees_another_merchants_conversation() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let s = stack(&db, redis.url()).await;
    let a = shop(&s).await;
    assert_eq!(
        s.send_dm(CUSTOMER, "How much is the ceramic mug?")
            .await
            .expect("dm"),
        200
    );
    s.next_reply(CUSTOMER, 0, Duration::from_secs(20))
        .await
        .expect("a reply");
    let b: MerchantId = s
        .worker_cli(&["merchant", "create", "--name", "Other"])
        .expect("b")
        .trim()
        .parse()
        .expect("uuid");

    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let app = db.app_db(2).await;
    let count = |m: MerchantId, table: &'static str| {
        let app = app.clone();
        async move {
            app.as_merchant(m, async move |mut c: &AsyncPgConnection| {
                let r: N = diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
                    .get_result(&mut c)
                    .await?;
                Ok::<_, DbError>(r.n)
            })
            .await
            .expect("count")
        }
    };
    for table in [
        "conversations",
        "messages",
        "outbound_messages",
        "webhook_events",
        "instagram_accounts",
        "products",
    ] {
        assert!(count(a, table).await > 0, "{table}: A's own rows");
        assert_eq!(count(b, table).await, 0, "{table}: B sees A's rows");
    }
    // Past RLS (superuser), the rows are there: the zeros above are the policy's doing.
    let r: N = diesel::sql_query("SELECT count(*) AS n FROM messages")
        .get_result(&mut db.superuser_conn().await)
        .await
        .expect("count");
    assert!(r.n >= 2);
}

/// SPEC §5.3: a send whose answer was lost is confirmed by its echo. Echoes have a queue of their
/// own, so a backlog of model calls on `inbound_event` longer than `ECHO_CONFIRM_SECS` does not
/// hold the echo back until the part is sent a second time.
#[tokio::test(flavor = "multi_thread")]
async fn an_echo_confirms_a_lost_answer_even_behind_a_backlog_of_model_calls() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let s = stack_with(
        &db,
        redis.url(),
        vec![
            ("WORKER_CONCURRENCY", "2".into()),
            ("META_HTTP_TIMEOUT_MS", "800".into()),
        ],
    )
    .await;
    shop(&s).await;
    let llm = s.llm.as_ref().expect("fake model");
    llm.set_reply(Some("Temos sim!".into()));
    // Two model calls at a time, 1.5 s each: 14 messages are a 10 s backlog.
    llm.set_latency(Duration::from_millis(1500));
    // Meta takes the first send but its answer never comes back in time; its echo does.
    s.fake
        .fail_next(Endpoint::Messages, Failure::hang(Duration::from_secs(3)));
    let customers: Vec<String> = (0..14).map(|i| format!("55500{i:02}")).collect();
    for c in &customers {
        assert_eq!(s.send_dm(c, "Tem o boné?").await.expect("dm"), 200);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while s.fake.sent_count() < customers.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Long enough for an unconfirmed part to be sent again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for c in &customers {
        assert_eq!(s.replies_to(c), 1, "customer {c} got exactly one answer");
    }
    assert_eq!(
        s.fake.requests_to(Endpoint::Messages).len(),
        customers.len(),
        "one Graph call per answer: the lost answer was confirmed by its echo"
    );
}

/// Issue 13: a DM about a product gets its text, then one card message with that product
/// (image, price, link, postback), with quick replies on that last message — each once, in
/// order — and tapping the card's postback or a quick reply is answered about its product.
#[tokio::test(flavor = "multi_thread")]
async fn a_dm_about_a_product_gets_text_then_its_card_with_quick_replies_and_taps_are_answered() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let s = stack(&db, redis.url()).await;
    let merchant = s
        .worker_cli(&["merchant", "create", "--name", "Loja Azul"])
        .expect("merchant")
        .trim()
        .to_owned();
    let catalog = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/demo-catalog-pt.csv"
    );
    s.worker_cli(&["catalog", "import", "--merchant", &merchant, catalog])
        .expect("catalog");
    let redirect = s.connect_account(&merchant).await.expect("connect flow");
    assert!(!redirect.contains("error="), "{redirect}");
    s.fake
        .deliver_echoes_to(&format!("{}/webhooks/instagram", s.base), IG_SECRET);

    assert_eq!(
        s.send_dm(CUSTOMER, "oi, vcs tem caneca?")
            .await
            .expect("dm"),
        200
    );
    let got = s.messages_after(CUSTOMER, 1, Duration::from_secs(25)).await;
    assert_eq!(got.len(), 2, "text, then the card message: {got:#?}");
    let text = got[0]["text"].as_str().expect("text first");
    assert!(
        text.contains("Caneca de cerâmica azul") && text.contains("39.9"),
        "{text}"
    );
    assert!(
        got[0].get("quick_replies").is_none(),
        "quick replies ride on the last message"
    );
    let card = &got[1];
    assert!(card.get("text").is_none());
    assert_eq!(card["attachment"]["type"], "template");
    assert_eq!(card["attachment"]["payload"]["template_type"], "generic");
    let elements = card["attachment"]["payload"]["elements"]
        .as_array()
        .expect("elements");
    assert_eq!(elements.len(), 1, "{elements:#?}");
    let e = &elements[0];
    assert_eq!(e["title"], "Caneca de cerâmica azul");
    assert_eq!(e["subtitle"], "R$ 39,90 · Em estoque");
    assert_eq!(
        e["image_url"],
        "https://loja-azul.example/img/caneca-azul.jpg"
    );
    assert_eq!(
        e["default_action"],
        serde_json::json!({"type": "web_url", "url": "https://loja-azul.example/p/caneca-azul"})
    );
    assert_eq!(
        e["buttons"],
        serde_json::json!([
            {"type": "web_url", "url": "https://loja-azul.example/p/caneca-azul", "title": "Ver produto"},
            {"type": "postback", "title": "Quero este", "payload": "WANT:CAN-CER-AZ"}
        ])
    );
    let quick = card["quick_replies"]
        .as_array()
        .expect("quick replies on the card");
    assert!(!quick.is_empty() && quick.len() <= 13, "{quick:#?}");
    for q in quick {
        assert_eq!(q["content_type"], "text");
        assert!(
            q["title"].as_str().expect("title").chars().count() <= 20,
            "{q}"
        );
    }
    // The suggestions are other products that match what was asked (here the other mug).
    assert!(
        quick.iter().all(|q| q["payload"]
            .as_str()
            .is_some_and(|p| p.starts_with("SKU:CAN-") && p != "SKU:CAN-CER-AZ")),
        "{quick:#?}"
    );
    // Each part once: the echoes confirmed them, nothing was sent again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.messages_to(CUSTOMER).len(), 2);
    let app = db.app_db(1).await;
    let m: MerchantId = merchant.parse().expect("uuid");
    #[derive(diesel::QueryableByName)]
    struct Part {
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        card: bool,
    }
    let parts: Vec<Part> = app
        .as_merchant(m, async |mut c: &AsyncPgConnection| {
            Ok::<_, DbError>(
                diesel::sql_query(
                    "SELECT status, coalesce(payload ? 'attachment', false) AS card \
                     FROM outbound_messages ORDER BY created_at, part_index",
                )
                .load::<Part>(&mut c)
                .await?,
            )
        })
        .await
        .expect("parts");
    let rows: Vec<(&str, bool)> = parts.iter().map(|p| (p.status.as_str(), p.card)).collect();
    assert_eq!(rows, [("sent", false), ("sent", true)]);
    #[derive(diesel::QueryableByName)]
    struct Paused {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        paused: bool,
    }
    let paused: Paused = app
        .as_merchant(m, async |mut c: &AsyncPgConnection| {
            Ok::<_, DbError>(
                diesel::sql_query(
                    "SELECT bool_or(paused_until IS NOT NULL OR needs_human) AS paused FROM conversations",
                )
                .get_result(&mut c)
                .await?,
            )
        })
        .await
        .expect("conversation");
    assert!(!paused.paused, "the card's echo is ours: no human takeover");

    // "Quero este" on the card comes back as a postback and is answered about that product.
    let llm = s.llm.as_ref().expect("fake model");
    llm.clear_requests();
    assert_eq!(
        s.send_tap(CUSTOMER, true, "Quero este", "WANT:CAN-CER-AZ")
            .await
            .expect("postback"),
        200
    );
    let got = s.messages_after(CUSTOMER, 3, Duration::from_secs(25)).await;
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(
        got[2]["text"]
            .as_str()
            .expect("text")
            .contains("Caneca de cerâmica azul")
    );
    assert_eq!(
        got[3]["attachment"]["payload"]["elements"][0]["title"],
        "Caneca de cerâmica azul"
    );
    let asked = llm.requests();
    assert!(
        asked[0].messages[0].1.contains("tapped \"Quero este\"")
            && asked[0].messages[0].1.contains("(SKU CAN-CER-AZ)"),
        "the tapped product is in the prompt: {}",
        asked[0].messages[0].1
    );

    // A quick reply's tap is a message with its payload, answered about its product (one
    // suggested in an earlier answer: the denim cap, out of stock).
    llm.clear_requests();
    let title = "Boné jeans";
    assert_eq!(
        s.send_tap(CUSTOMER, false, title, "SKU:BON-JNS-01")
            .await
            .expect("quick reply"),
        200
    );
    let got = s.messages_after(CUSTOMER, 5, Duration::from_secs(25)).await;
    assert_eq!(got.len(), 6, "{got:#?}");
    assert!(
        got[4]["text"]
            .as_str()
            .expect("text")
            .contains("Boné jeans")
    );
    let cap = &got[5]["attachment"]["payload"]["elements"][0];
    assert_eq!(cap["subtitle"], "R$ 59,90 · Esgotado");
    assert_eq!(
        cap["buttons"],
        serde_json::json!([{"type": "web_url", "url": "https://loja-azul.example/p/bone-jeans", "title": "Ver produto"}]),
        "out of stock: nothing to want"
    );
    assert!(llm.requests()[0].messages[0].1.contains("(SKU BON-JNS-01)"));
}
