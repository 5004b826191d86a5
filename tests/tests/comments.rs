//! Comments turned into private replies, through the real ingress and worker: the merchant's
//! rule, the post's linked products, one private reply and one public reply per comment under
//! Meta's rules (the fake Meta enforces one private reply per comment, 7 days, 100 Send API
//! calls a second and 750 private replies an hour), and a burst on one post.
//! Run alone with `cargo build --bin ingress --bin worker && cargo test -p igsales-tests --test comments`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use igsales_tests::fake_meta::{Endpoint, Failure};
use igsales_tests::stack::{Stack, StackConfig};
use igsales_tests::{TestDb, TestRedis};

const POST: &str = "18000000000000001";

async fn stack(db: &TestDb, redis: &TestRedis, extra: Vec<(&'static str, String)>) -> Stack {
    let mut worker_env = vec![
        ("GRAPH_THROTTLE_WAIT_SECS", "1".into()),
        ("GRAPH_MAX_PAUSE_SECS", "1".into()),
        ("JOB_BACKOFF_BASE_MS", "50".into()),
        ("JOB_BACKOFF_MAX_MS", "200".into()),
    ];
    worker_env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    worker_env.extend(extra);
    Stack::start(StackConfig {
        database_url: db.app_url(),
        redis_url: redis.url(),
        model: None,
        worker_env,
    })
    .await
    .expect("stack")
}

/// A merchant with the demo catalog, its account connected through OAuth, the mug linked to
/// the post, and comments on with `rule` (extra `merchant comments` arguments).
async fn shop(s: &Stack, rule: &[&str]) -> String {
    let merchant = s
        .worker_cli(&["merchant", "create", "--name", "Loja Azul"])
        .expect("merchant")
        .trim()
        .to_owned();
    let catalog = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo-catalog.csv");
    s.worker_cli(&["catalog", "import", "--merchant", &merchant, catalog])
        .expect("catalog");
    s.connect_account(&merchant).await.expect("connect flow");
    let linked = s
        .worker_cli(&[
            "catalog",
            "link",
            "--merchant",
            &merchant,
            "--media",
            POST,
            "--sku",
            "MUG-CER-01",
        ])
        .expect("link");
    assert!(linked.contains("1 product(s) linked"), "{linked}");
    let mut args = vec!["merchant", "comments", "--merchant", &merchant, "--on"];
    args.extend_from_slice(rule);
    s.worker_cli(&args).expect("comments on");
    merchant
}

/// Waits until `n` private replies went out (or the deadline), then a moment more for extras.
async fn private_replies(s: &Stack, n: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    while s.fake.private_replies().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.fake.private_replies().len()
}

fn comment(s: &Stack, id: &str, author: &str, text: &str) -> String {
    s.fake.comment(
        &s.account.user_id,
        id,
        author,
        POST,
        text,
        None,
        Duration::from_secs(5),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_comment_gets_one_private_reply_about_the_posts_products_then_one_public_reply() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let s = stack(&db, &redis, vec![]).await;
    let merchant = shop(
        &s,
        &[
            "--trigger",
            "preço",
            "--trigger",
            "quero",
            "--public-reply",
            "Te chamei no direct!",
        ],
    )
    .await;
    let body = comment(&s, "17900000000000001", "5551001", "Qual o preço?");
    assert_eq!(s.deliver(body.clone()).await.expect("deliver"), 200);
    assert_eq!(private_replies(&s, 1, Duration::from_secs(15)).await, 1);
    let reply = &s.fake.private_replies()[0];
    assert_eq!(reply.comment_id.as_deref(), Some("17900000000000001"));
    assert_eq!(reply.recipient_id, "5551001", "the comment's author");
    assert!(
        reply.body["message"]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{}",
        reply.body
    );
    // The model saw the comment, that it is one, and the post's product first.
    let llm = s.llm.as_ref().expect("fake model");
    let prompt = llm.requests().last().cloned().expect("a model call");
    assert!(
        prompt.last("user").expect("user").contains("Qual o preço?"),
        "{:?}",
        prompt.messages
    );
    let system: Vec<&(String, String)> = prompt
        .messages
        .iter()
        .filter(|(r, _)| r == "system")
        .collect();
    assert!(
        system.iter().any(|(_, t)| t.contains("public comment")),
        "{system:?}"
    );
    let catalog = &system[0].1;
    let first_product = catalog
        .lines()
        .find(|l| l.starts_with("- ") && l.contains("(SKU "))
        .expect("a product line");
    assert!(first_product.contains("MUG-CER-01"), "{catalog}");
    // Then the public reply, once, under the same comment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.fake.public_replies().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let public = s.fake.public_replies();
    assert_eq!(public.len(), 1, "{public:?}");
    assert_eq!(public[0].comment_id, "17900000000000001");
    assert_eq!(public[0].text, "Te chamei no direct!");

    // A redelivery of the comment is the same event: nothing more.
    assert_eq!(s.deliver(body).await.expect("deliver"), 200);
    // Not a trigger word, a reply in a thread, the account's own comment: no reply at all.
    let quiet = [
        comment(&s, "17900000000000002", "5551002", "Lindo demais"),
        s.fake.comment(
            &s.account.user_id,
            "17900000000000003",
            "5551003",
            POST,
            "quero também",
            Some("17900000000000001"),
            Duration::from_secs(1),
        ),
        comment(
            &s,
            "17900000000000004",
            &s.account.user_id,
            "quero? chama no direct",
        ),
    ];
    for body in quiet {
        assert_eq!(s.deliver(body).await.expect("deliver"), 200);
    }
    // Older than 7 days: never answered, a dead letter window_expired.
    let old = s.fake.comment(
        &s.account.user_id,
        "17900000000000005",
        "5551005",
        POST,
        "quero",
        None,
        Duration::from_secs(8 * 24 * 3600),
    );
    assert_eq!(s.deliver(old).await.expect("deliver"), 200);
    let mut redis_conn = igsales_tests::redis::manager(&redis.url()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let raws: Vec<String> = redis::cmd("LRANGE")
            .arg("dlq:inbound_event")
            .arg(0)
            .arg(-1)
            .query_async(&mut redis_conn)
            .await
            .expect("dlq");
        if !raws.is_empty() || Instant::now() > deadline {
            break raws;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains("window_expired"), "{}", dead[0]);
    assert_eq!(private_replies(&s, 2, Duration::from_secs(2)).await, 1);
    assert_eq!(s.fake.public_replies().len(), 1);
    assert_eq!(s.fake.limit_breaches(), 0);

    // The author answers in DMs: a normal conversation, answered to their id.
    let before = s.messages_to("5551001").len();
    assert_eq!(
        s.send_dm("5551001", "Quero a caneca").await.expect("dm"),
        200
    );
    let after = s
        .messages_after("5551001", before, Duration::from_secs(15))
        .await;
    assert!(after.len() > before, "the DM was answered");
    let dm_sends: Vec<_> = s
        .fake
        .sent_messages()
        .into_iter()
        .filter(|m| m.recipient_id == "5551001" && m.comment_id.is_none())
        .collect();
    assert!(!dm_sends.is_empty());
    assert_eq!(dm_sends[0].body["recipient"]["id"], "5551001");

    // The parts are stored on their channels, sent.
    let rows = db
        .strings(&format!(
            "SELECT channel || ':' || status || ':' || coalesce(comment_id, '') AS s \
             FROM outbound_messages WHERE merchant_id = '{merchant}' AND channel <> 'dm' \
             ORDER BY part_index"
        ))
        .await;
    assert_eq!(
        rows,
        [
            "private_reply:sent:17900000000000001",
            "public_reply:sent:17900000000000001"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_comments_on_one_post_get_one_private_reply_each_within_metas_limits() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    // Below the fake's 100 calls a second, with room for the two workers' clocks.
    let s = stack(
        &db,
        &redis,
        vec![
            ("GRAPH_SEND_RATE_PER_SEC", "50".into()),
            ("WORKER_CONCURRENCY", "32".into()),
        ],
    )
    .await;
    let _second = s.another_worker();
    let merchant: uuid::Uuid = shop(&s, &[]).await.parse().expect("merchant id");
    const N: usize = 500;
    let bodies: Vec<String> = (0..N)
        .map(|i| {
            comment(
                &s,
                &format!("179100000{i:08}"),
                &format!("77700{i:05}"),
                "quero! preço?",
            )
        })
        .collect();
    // Every comment delivered, one in ten twice at once (Meta redelivers).
    let url = format!("{}/webhooks/instagram", s.base);
    let mut deliveries = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let copies = if i % 10 == 0 { 2 } else { 1 };
        for _ in 0..copies {
            let (url, body) = (url.clone(), body.clone());
            deliveries.push(tokio::task::spawn_blocking(move || {
                igsales_tests::fake_meta::webhook::deliver(
                    &url,
                    igsales_tests::stack::IG_SECRET,
                    &body,
                )
                .0
            }));
        }
    }
    // And one in ten runs as two copies of its job at once, past the ingress's dedupe (a
    // replayed dead letter racing a retry): the workers must still reply once.
    let queue = igsales_jobs::JobQueue::<igsales_jobs::InboundEventV1>::new(
        igsales_tests::redis::manager(&redis.url()).await,
    );
    let copies: Vec<igsales_jobs::InboundEventV1> = bodies
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 == 5)
        .map(|(i, body)| {
            let v: serde_json::Value = serde_json::from_str(body).expect("body");
            igsales_jobs::InboundEventV1 {
                merchant_id: merchant,
                instagram_account_id: s.account.user_id.clone(),
                event_id: format!("comment:179100000{i:08}"),
                kind: igsales_meta::webhook::EventKind::Comment,
                entry_time_ms: None,
                received_at: chrono::Utc::now(),
                event: serde_json::value::RawValue::from_string(
                    v["entry"][0]["changes"][0].to_string(),
                )
                .expect("raw"),
                delivery: Default::default(),
            }
        })
        .collect();
    for r in futures::future::join_all(copies.into_iter().map(|j| {
        let q = queue.clone();
        async move { q.push(j).await }
    }))
    .await
    {
        r.expect("push a copy");
    }
    for d in deliveries {
        assert_eq!(d.await.expect("delivery"), 200);
    }
    let sent = private_replies(&s, N, Duration::from_secs(90)).await;
    let replies = s.fake.private_replies();
    let mut per_comment: HashMap<String, usize> = HashMap::new();
    for r in &replies {
        *per_comment
            .entry(r.comment_id.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(sent, N, "one private reply each, nothing lost");
    assert_eq!(per_comment.len(), N);
    assert!(per_comment.values().all(|n| *n == 1), "none twice");
    // Every private reply the workers asked for was accepted: no second try refused by Meta's
    // one-per-comment rule, no call over its rate limits.
    let asked = s
        .fake
        .requests_to(igsales_tests::fake_meta::Endpoint::Messages)
        .iter()
        .filter(|r| r.body.contains("comment_id"))
        .count();
    assert_eq!(asked, N);
    assert_eq!(s.fake.limit_breaches(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_reply_whose_answer_was_lost_is_not_sent_twice_nor_is_a_public_one() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let s = stack(
        &db,
        &redis,
        vec![
            ("META_HTTP_TIMEOUT_MS", "700".into()),
            ("ECHO_CONFIRM_SECS", "2".into()),
        ],
    )
    .await;
    let merchant = shop(&s, &["--public-reply", "Te chamei no direct!"]).await;
    // No echo comes, and both calls are answered too late: Meta did act on each.
    s.fake.stop_echoes();
    s.fake.fail_next(
        Endpoint::Messages,
        Failure::hang(Duration::from_millis(1500)),
    );
    s.fake.fail_next(
        Endpoint::CommentReplies,
        Failure::hang(Duration::from_millis(1500)),
    );
    let body = comment(&s, "17920000000000001", "5552001", "quero");
    assert_eq!(s.deliver(body).await.expect("deliver"), 200);
    // The private reply is tried once more after the echo wait; Meta refuses a second one,
    // which says the first went out.
    let deadline = Instant::now() + Duration::from_secs(20);
    let private_calls = || {
        s.fake
            .requests_to(Endpoint::Messages)
            .iter()
            .filter(|r| r.body.contains("comment_id"))
            .count()
    };
    while private_calls() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.fake.requests_to(Endpoint::CommentReplies).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past a second echo wait: nothing more is tried.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(private_calls(), 2);
    assert_eq!(s.fake.private_replies().len(), 1, "the customer got one");
    assert_eq!(s.fake.requests_to(Endpoint::CommentReplies).len(), 1);
    assert_eq!(s.fake.public_replies().len(), 1);
    let rows = db
        .strings(&format!(
            "SELECT channel || ':' || status AS s FROM outbound_messages \
             WHERE merchant_id = '{merchant}' ORDER BY part_index"
        ))
        .await;
    assert_eq!(rows, ["private_reply:sent", "public_reply:send_unknown"]);
}
