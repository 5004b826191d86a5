//! Meta's deauthorize and data-deletion callbacks.

mod common;

use common::{Harness, IG_SECRET, META_SECRET};
use diesel::QueryableByName;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use igsales_schema::MerchantId;
use igsales_tests::http::{Answer, get, post};

const ACCOUNT: &str = "17841400538867190";

fn form(signed_request: &str) -> String {
    format!(
        "signed_request={}",
        url::form_urlencoded::byte_serialize(signed_request.as_bytes()).collect::<String>()
    )
}

async fn call(h: &Harness, path: &str, signed_request: &str) -> Answer {
    post(
        h.url(path),
        form(signed_request),
        vec![(
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
    )
    .await
}

fn signed(secret: &str, user_id: &str) -> String {
    signed_at(secret, user_id, chrono::Utc::now().timestamp())
}

fn signed_at(secret: &str, user_id: &str, issued_at: i64) -> String {
    igsales_meta::signed_request::sign(
        secret,
        &format!(r#"{{"algorithm":"HMAC-SHA256","issued_at":{issued_at},"user_id":"{user_id}"}}"#),
    )
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn count(h: &Harness, sql: &str) -> i64 {
    let r: Count = diesel::sql_query(sql)
        .get_result(&mut h.db.superuser_conn().await)
        .await
        .expect("count");
    r.n
}

/// Seeds conversations with messages for `merchant` (as the superuser, past RLS).
async fn seed_conversation(h: &Harness, merchant: MerchantId, account: &str, customer: &str) {
    let conv = uuid::Uuid::new_v4();
    h.db
        .superuser_conn()
        .await
        .batch_execute(&format!(
            "INSERT INTO conversations (id, merchant_id, instagram_page_id, customer_igsid) VALUES ('{conv}', '{merchant}', '{account}', '{customer}');
             INSERT INTO messages (merchant_id, conversation_id, mid, direction, author, text, sent_at)
               VALUES ('{merchant}', '{conv}', 'mid-{conv}', 'inbound', 'customer', 'secret text', now());"
        ))
        .await
        .expect("seed conversation");
}

#[tokio::test(flavor = "multi_thread")]
async fn deauthorize_disconnects_the_account_and_forgeries_are_400() {
    let h = Harness::start().await;
    let merchant = h.merchant_with_account(ACCOUNT).await;

    let forged = call(&h, "/meta/deauthorize", &signed("not-our-secret", ACCOUNT)).await;
    assert_eq!(forged.status, 400);
    assert_eq!(forged.json()["error"]["code"], "invalid_signed_request");
    assert_eq!(call(&h, "/meta/deauthorize", "garbage").await.status, 400);
    let missing = post(
        h.url("/meta/deauthorize"),
        String::new(),
        vec![(
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
    )
    .await;
    assert_eq!(missing.status, 400);
    // Genuinely signed, but captured long ago (or dated ahead) and replayed: refused.
    let now = chrono::Utc::now().timestamp();
    for issued_at in [now - 601, now + 601] {
        let replayed = call(
            &h,
            "/meta/deauthorize",
            &signed_at(IG_SECRET, ACCOUNT, issued_at),
        )
        .await;
        assert_eq!(replayed.status, 400, "{}", replayed.body);
        assert_eq!(replayed.json()["error"]["code"], "invalid_signed_request");
    }
    let undated = igsales_meta::signed_request::sign(
        IG_SECRET,
        &format!(r#"{{"algorithm":"HMAC-SHA256","user_id":"{ACCOUNT}"}}"#),
    );
    assert_eq!(call(&h, "/meta/deauthorize", &undated).await.status, 400);
    assert_eq!(
        count(
            &h,
            "SELECT count(*) AS n FROM instagram_accounts WHERE token_ciphertext IS NOT NULL"
        )
        .await,
        1
    );

    let ok = call(&h, "/meta/deauthorize", &signed(IG_SECRET, ACCOUNT)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        count(&h, &format!("SELECT count(*) AS n FROM instagram_accounts WHERE merchant_id = '{merchant}' AND token_ciphertext IS NULL AND token_expires_at IS NULL AND needs_reauth")).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn data_deletion_removes_the_customers_conversations_and_reports_its_status() {
    let h = Harness::start().await;
    let a = h.merchant_with_account(ACCOUNT).await;
    let b = h.merchant_with_account("17841400000000555").await;
    seed_conversation(&h, a, ACCOUNT, "5550001").await;
    seed_conversation(&h, b, "17841400000000555", "5550001").await;
    seed_conversation(&h, a, ACCOUNT, "5550002").await;

    assert_eq!(
        call(&h, "/meta/data-deletion", &signed("forged", "5550001"))
            .await
            .status,
        400
    );
    assert_eq!(
        count(&h, "SELECT count(*) AS n FROM conversations").await,
        3
    );

    // The second configured secret is accepted too.
    let r = call(&h, "/meta/data-deletion", &signed(META_SECRET, "5550001")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    let code = body["confirmation_code"].as_str().expect("code").to_owned();
    assert_eq!(code.len(), 32);
    assert_eq!(
        body["url"],
        h.url(&format!("/meta/data-deletion/status?code={code}"))
    );
    assert_eq!(
        count(
            &h,
            "SELECT count(*) AS n FROM conversations WHERE customer_igsid = '5550001'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &h,
            "SELECT count(*) AS n FROM messages WHERE text = 'secret text'"
        )
        .await,
        1,
        "only the other customer's message is left"
    );
    assert_eq!(
        count(&h, "SELECT count(*) AS n FROM conversations").await,
        1
    );

    let status = get(body["url"].as_str().expect("url").to_owned(), vec![]).await;
    assert_eq!(status.status, 200);
    let s = status.json();
    assert_eq!(s["status"], "completed");
    assert_eq!(s["conversations_deleted"], 2);
    assert!(!status.body.contains("5550001"), "the status names no user");
    assert_eq!(
        get(
            h.url(&format!(
                "/meta/data-deletion/status?code={}",
                "0".repeat(32)
            )),
            vec![]
        )
        .await
        .status,
        404
    );
    assert_eq!(
        get(h.url("/meta/data-deletion/status?code=zz"), vec![])
            .await
            .status,
        400
    );

    // An account's own deletion: its conversations go and it is disconnected.
    let r = call(&h, "/meta/data-deletion", &signed(IG_SECRET, ACCOUNT)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        count(
            &h,
            &format!("SELECT count(*) AS n FROM conversations WHERE merchant_id = '{a}'")
        )
        .await,
        0
    );
    assert_eq!(count(&h, &format!("SELECT count(*) AS n FROM instagram_accounts WHERE merchant_id = '{a}' AND needs_reauth AND token_ciphertext IS NULL")).await, 1);
    assert_eq!(count(&h, &format!("SELECT count(*) AS n FROM instagram_accounts WHERE merchant_id = '{b}' AND NOT needs_reauth")).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn data_deletion_scrubs_the_customers_jobs_and_dead_letters_from_redis() {
    use igsales_tests::fake_meta::webhook as wh;
    use redis::AsyncCommands;
    let h = Harness::start().await;
    let merchant = h.merchant_with_account(ACCOUNT).await;
    seed_conversation(&h, merchant, ACCOUNT, "5550001").await;
    // Waiting jobs: two DMs of the customer who asks for deletion, one of another customer.
    let now = chrono::Utc::now().timestamp_millis();
    for (customer, mid) in [
        ("5550001", "m_a1"),
        ("5550001", "m_a2"),
        ("5550002", "m_b1"),
    ] {
        let body = wh::envelope(&[wh::messaging_entry(
            ACCOUNT,
            now,
            vec![wh::text_message(
                customer,
                ACCOUNT,
                mid,
                "meu endereço é…",
                now,
            )],
        )]);
        assert_eq!(common::deliver(&h, &body, IG_SECRET).await.status, 200);
    }
    let mut r = h.redis_conn().await;
    // A finished job and a running one (in no list or set of the queue: some worker holds it).
    let finished = r#"{"event":{"sender":{"id":"5550001"}}}"#;
    let _: () = redis::pipe()
        .hset("inbound_event:data", "finished-task", finished)
        .sadd("inbound_event:done", "finished-task")
        .hset("inbound_event:meta:finished-task", "status", "Done")
        .hset("inbound_event:data", "running-task", finished)
        .query_async(&mut r)
        .await
        .expect("seed");
    // Dead letters naming either customer, one of them an unreadable webhook's raw body.
    for record in [
        r#"{"payload":{"event":{"sender":{"id":"5550001"}}},"failed_at":"2026-12-07T00:00:00.000Z"}"#,
        r#"{"payload":{"event":{"sender":{"id":"5550002"}}},"failed_at":"2026-12-07T00:00:00.000Z"}"#,
    ] {
        let _: () = r.lpush("dlq:send_message", record).await.expect("lpush");
    }
    let _: () = r
        .lpush(
            "dlq:webhook_invalid",
            r#"{"received_at":"2026-12-07T00:00:00.000Z","body":"{\"sender\":{\"id\":\"5550001\"}"}"#,
        )
        .await
        .expect("lpush");

    let waiting = |r: redis::aio::MultiplexedConnection| async move {
        let mut r = r;
        let a: usize = r.llen("inbound_event:active").await.expect("active");
        let s: usize = r.zcard("inbound_event:scheduled").await.expect("scheduled");
        a + s
    };
    assert_eq!(waiting(r.clone()).await, 3, "three DMs wait");
    let done = call(&h, "/meta/data-deletion", &signed(IG_SECRET, "5550001")).await;
    assert_eq!(done.status, 200, "{}", done.body);

    let left: Vec<String> = r.hvals("inbound_event:data").await.expect("hvals");
    assert_eq!(
        left.len(),
        2,
        "the other customer's job and the running one: {left:?}"
    );
    assert!(left.iter().any(|j| j.contains("5550002")));
    assert!(
        r.hexists::<_, _, bool>("inbound_event:data", "running-task")
            .await
            .expect("hexists"),
        "a running job is left to finish"
    );
    assert_eq!(
        waiting(r.clone()).await,
        1,
        "only the other customer's job still waits"
    );
    assert!(
        !r.sismember::<_, _, bool>("inbound_event:done", "finished-task")
            .await
            .expect("sismember")
    );
    assert!(
        !r.exists::<_, bool>("inbound_event:meta:finished-task")
            .await
            .expect("exists")
    );
    let dead: Vec<String> = r.lrange("dlq:send_message", 0, -1).await.expect("dlq");
    assert_eq!(dead.len(), 1);
    assert!(dead[0].contains("5550002"));
    assert_eq!(
        r.llen::<_, usize>("dlq:webhook_invalid")
            .await
            .expect("llen"),
        0
    );
}
