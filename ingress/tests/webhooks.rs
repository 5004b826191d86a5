//! `POST /webhooks/instagram` and the handshake, against real Redis and Postgres.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Harness, IG_SECRET, META_SECRET, VERIFY, counter, deliver};
use igsales_tests::fake_meta::webhook::{
    self as wh, envelope, messaging_entry, signature_256, signature_sha1,
};
use igsales_tests::http::{get, post};

const ACCOUNT: &str = "17841400538867190";
const CUSTOMER: &str = "1129842642640637";

/// meta-platform.md §1.2: 426 bytes, signed with `test_app_secret`.
const FIXTURE: &str = r#"{"object":"instagram","entry":[{"time":1762022388574,"id":"17841400538867190","messaging":[{"sender":{"id":"1129842642640637"},"recipient":{"id":"17841400538867190"},"timestamp":1762022346848,"message":{"mid":"aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDAwNTM4ODY3MTkwOjM0MDI4MjM2Njg0MTcxMDMwMTI0NDI1ODU5OTE3NTI2OTQwODg3NjozMjUwMzU3NTI4NDQ2NDA1ODQ5NjkyMTc3NjY5OTczNjA2NAZDZD","text":"Ol\u00e1, tem em azul? \ud83d\udc99"}}]}]}"#;
const FIXTURE_SIG: &str = "sha256=d54d64374bb54b0d60bf5113d0e430540cad72b664dedc6e85406b3dbd0965b9";

fn text_body(account: &str, mid: &str, text: &str) -> String {
    envelope(&[messaging_entry(
        account,
        1_762_022_388_574,
        vec![wh::text_message(
            CUSTOMER,
            account,
            mid,
            text,
            1_762_022_346_848,
        )],
    )])
}

async fn dlq_len(h: &Harness) -> i64 {
    redis::cmd("LLEN")
        .arg("dlq:webhook_invalid")
        .query_async(&mut h.redis_conn().await)
        .await
        .expect("llen")
}

async fn signed_raw(h: &Harness, body: &str, headers: Vec<(&str, String)>) -> u16 {
    let mut all = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    all.extend(headers.into_iter().map(|(k, v)| (k.to_owned(), v)));
    post(h.url("/webhooks/instagram"), body.to_owned(), all)
        .await
        .status
}

#[tokio::test(flavor = "multi_thread")]
async fn the_documented_fixture_verifies_and_becomes_one_message_job() {
    let h = Harness::start().await;
    let merchant = h.merchant_with_account(ACCOUNT).await;
    assert_eq!(FIXTURE.len(), 426);
    let status = signed_raw(
        &h,
        FIXTURE,
        vec![("X-Hub-Signature-256", FIXTURE_SIG.to_owned())],
    )
    .await;
    assert_eq!(status, 200);
    let jobs = h.jobs().await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.merchant_id, merchant.0);
    assert_eq!(job.instagram_account_id, ACCOUNT);
    assert!(
        job.event_id.starts_with("message:aWdfZAG1faXRl"),
        "{}",
        job.event_id
    );
    assert_eq!(job.entry_time_ms, Some(1_762_022_388_574));
    // The raw event rides along byte for byte, escapes included.
    assert!(
        job.event
            .get()
            .contains(r#""text":"Ol\u00e1, tem em azul? \ud83d\udc99""#)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_signature_is_401_and_nothing_is_parsed() {
    let h = Harness::start().await;
    h.merchant_with_account(ACCOUNT).await;
    // Garbage would be parked in the DLQ if it were ever parsed.
    let garbage = "not json at all";
    let good_for_other = signature_256(IG_SECRET, b"another body");
    let right = signature_256(IG_SECRET, garbage.as_bytes());
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("missing header", vec![]),
        (
            "wrong prefix",
            vec![("X-Hub-Signature-256", right.replace("sha256=", "sha1="))],
        ),
        (
            "wrong length",
            vec![("X-Hub-Signature-256", right[..60].to_owned())],
        ),
        (
            "non-hex",
            vec![("X-Hub-Signature-256", format!("sha256={}", "g".repeat(64)))],
        ),
        (
            "another body's signature",
            vec![("X-Hub-Signature-256", good_for_other)],
        ),
        (
            "wrong secret",
            vec![(
                "X-Hub-Signature-256",
                signature_256("not-the-secret", garbage.as_bytes()),
            )],
        ),
        (
            "sha1 only",
            vec![(
                "X-Hub-Signature",
                signature_sha1(IG_SECRET, garbage.as_bytes()),
            )],
        ),
    ];
    let failures_before = counter(
        &h,
        "igsales_webhook_signature_failures_total{reason=\"mismatch\"}",
    )
    .await;
    for (what, headers) in cases {
        assert_eq!(signed_raw(&h, garbage, headers).await, 401, "{what}");
    }
    // A real message with a bad signature is not enqueued either.
    let body = text_body(ACCOUNT, "mid-unsigned", "hi");
    assert_eq!(
        signed_raw(
            &h,
            &body,
            vec![("X-Hub-Signature-256", signature_256("x", body.as_bytes()))]
        )
        .await,
        401
    );
    assert_eq!(
        dlq_len(&h).await,
        0,
        "nothing may be parsed before the signature passes"
    );
    assert!(h.jobs().await.is_empty());
    let failures_after = counter(
        &h,
        "igsales_webhook_signature_failures_total{reason=\"mismatch\"}",
    )
    .await;
    assert!(
        failures_after >= failures_before + 3.0,
        "{failures_before} → {failures_after}"
    );

    // The second configured secret verifies too, and a sha1 header alongside is tolerated.
    let body = text_body(ACCOUNT, "mid-second-secret", "hi");
    assert_eq!(deliver(&h, &body, META_SECRET).await.status, 200);
    let sha256 = signature_256(IG_SECRET, body.as_bytes());
    let sha1 = signature_sha1(IG_SECRET, body.as_bytes());
    assert_eq!(
        signed_raw(
            &h,
            &body,
            vec![("X-Hub-Signature-256", sha256), ("X-Hub-Signature", sha1)]
        )
        .await,
        200
    );
    assert_eq!(h.jobs().await.len(), 1);
}

/// Sends raw bytes and returns the status line's code.
fn raw_http(addr: &str, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // The server may answer and close before reading everything: ignore write errors.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_limit_are_413_with_or_without_a_content_length() {
    let h = Harness::start().await;
    let limit = h.state.settings.webhook.max_body_bytes;
    let big = "x".repeat(limit + 1);
    let sig = signature_256(IG_SECRET, big.as_bytes());
    assert_eq!(
        signed_raw(&h, &big, vec![("X-Hub-Signature-256", sig.clone())]).await,
        413
    );
    // Chunked: no length announced, the cap applies while reading.
    let addr = h.base.trim_start_matches("http://").to_owned();
    let mut req = format!(
        "POST /webhooks/instagram HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-Hub-Signature-256: {sig}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in big.as_bytes().chunks(8192) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let status = tokio::task::spawn_blocking(move || raw_http(&addr, &req))
        .await
        .expect("join");
    assert_eq!(status, 413);
    // Exactly at the limit is fine (it is then a signed but unreadable payload: 200).
    let at = "y".repeat(limit);
    assert_eq!(
        signed_raw(
            &h,
            &at,
            vec![(
                "X-Hub-Signature-256",
                signature_256(IG_SECRET, at.as_bytes())
            )]
        )
        .await,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_handshake_echoes_the_challenge_only_for_the_right_token_and_mode() {
    let h = Harness::start().await;
    let url = h.url("/webhooks/instagram");
    let ok = tokio::task::spawn_blocking({
        let url = url.clone();
        move || wh::verify_handshake(&url, VERIFY)
    })
    .await
    .expect("join");
    assert!(ok.passed(), "{ok:?}");
    let r = get(
        format!("{url}?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={VERIFY}"),
        vec![],
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "1158201444"));
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain"))
    );
    let wrong_token = get(
        format!("{url}?hub.mode=subscribe&hub.challenge=1&hub.verify_token=nope"),
        vec![],
    )
    .await;
    assert_eq!(wrong_token.status, 403);
    assert!(!wrong_token.body.contains(VERIFY));
    let wrong_mode = get(
        format!("{url}?hub.mode=unsubscribe&hub.challenge=1&hub.verify_token={VERIFY}"),
        vec![],
    )
    .await;
    assert_eq!(wrong_mode.status, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_garbage_is_parked_and_other_objects_are_ignored() {
    let h = Harness::start().await;
    h.merchant_with_account(ACCOUNT).await;
    let garbage = r#"{"object":"instagram","entry":"not-a-list"}"#;
    assert_eq!(deliver(&h, garbage, IG_SECRET).await.status, 200);
    assert_eq!(dlq_len(&h).await, 1);
    let record: String = redis::cmd("LINDEX")
        .arg("dlq:webhook_invalid")
        .arg(0)
        .query_async(&mut h.redis_conn().await)
        .await
        .expect("lindex");
    let record: serde_json::Value = serde_json::from_str(&record).expect("record");
    assert_eq!(record["body"], garbage);
    assert!(record["received_at"].is_string() && record["reason"].is_string());

    let page = r#"{"object":"page","entry":[{"id":"1","time":1,"messaging":[]}]}"#;
    assert_eq!(deliver(&h, page, IG_SECRET).await.status, 200);
    assert!(h.jobs().await.is_empty());
    assert_eq!(dlq_len(&h).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn replays_and_batches_make_exactly_one_job_per_event() {
    let h = Harness::start().await;
    let merchant = h.merchant_with_account(ACCOUNT).await;
    let body = text_body(ACCOUNT, "mid-replayed", "Tem em azul?");
    assert_eq!(deliver(&h, &body, IG_SECRET).await.status, 200);
    assert_eq!(deliver(&h, &body, IG_SECRET).await.status, 200);
    assert_eq!(h.jobs().await.len(), 1, "same body twice");

    // The same event again, now inside another batch with a new one.
    let batch = envelope(&[messaging_entry(
        ACCOUNT,
        1_762_022_399_000,
        vec![
            wh::text_message(
                CUSTOMER,
                ACCOUNT,
                "mid-new",
                "e o verde?",
                1_762_022_398_000,
            ),
            wh::text_message(
                CUSTOMER,
                ACCOUNT,
                "mid-replayed",
                "Tem em azul?",
                1_762_022_346_848,
            ),
        ],
    )]);
    assert_eq!(deliver(&h, &batch, IG_SECRET).await.status, 200);
    let ids: std::collections::HashSet<String> =
        h.jobs().await.into_iter().map(|j| j.event_id).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains("message:mid-new") && ids.contains("message:mid-replayed"));

    // The claim is where SPEC §4.1 says, with a 48 h TTL.
    let key = igsales_ingress_claim_key(merchant.0, "message:mid-new");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut h.redis_conn().await)
        .await
        .expect("ttl");
    assert!((172_000..=172_800).contains(&ttl), "{key}: ttl {ttl}");

    // Echo, deletion, reaction and read of one message are four distinct events.
    let one_mid = "mid-kinds";
    let kinds = envelope(&[messaging_entry(
        ACCOUNT,
        1_762_030_000_000,
        vec![
            wh::echo(ACCOUNT, CUSTOMER, one_mid, "Sim!", 1_762_030_000_100),
            wh::deleted(CUSTOMER, ACCOUNT, one_mid, 1_762_030_000_200),
            wh::reaction(
                CUSTOMER,
                ACCOUNT,
                one_mid,
                "react",
                "\u{2764}\u{fe0f}",
                1_762_030_000_300,
            ),
            wh::read(CUSTOMER, ACCOUNT, one_mid, 1_762_030_000_400),
        ],
    )]);
    assert_eq!(deliver(&h, &kinds, IG_SECRET).await.status, 200);
    assert_eq!(deliver(&h, &kinds, IG_SECRET).await.status, 200);
    let jobs = h.jobs().await;
    assert_eq!(
        jobs.len(),
        6,
        "{:?}",
        jobs.iter().map(|j| &j.event_id).collect::<Vec<_>>()
    );
    let mut of_mid: Vec<String> = jobs
        .iter()
        .filter(|j| j.event.get().contains(one_mid))
        .map(|j| {
            serde_json::to_value(j.kind)
                .expect("kind")
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    of_mid.sort();
    assert_eq!(of_mid, ["deleted", "echo", "reaction", "read"]);
    // Only what may call the model waits on `inbound_event`; the rest has its own queue.
    let signals = h.jobs_on("inbound_signal").await;
    assert_eq!(signals.len(), 4);
    assert!(signals.iter().all(|j| !j.kind.needs_model()));
    let model_bound = h.jobs_on("inbound_event").await;
    assert_eq!(model_bound.len(), 2);
    assert!(model_bound.iter().all(|j| j.kind.needs_model()));

    // A 50-event batch is 50 jobs.
    let events = (0..50)
        .map(|i| {
            wh::text_message(
                CUSTOMER,
                ACCOUNT,
                &format!("mid-batch-{i}"),
                "oi",
                1_762_040_000_000 + i,
            )
        })
        .collect();
    let fifty = envelope(&[messaging_entry(ACCOUNT, 1_762_040_001_000, events)]);
    assert_eq!(deliver(&h, &fifty, IG_SECRET).await.status, 200);
    assert_eq!(h.jobs().await.len(), 56);
}

fn igsales_ingress_claim_key(merchant: uuid::Uuid, event_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, event_id.as_bytes());
    format!("dedupe:{merchant}:{}", &hex::encode(digest.as_ref())[..32])
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_accounts_are_counted_as_unrouted_and_make_no_job() {
    let h = Harness::start().await;
    let series = "igsales_webhook_events_total{kind=\"message\",result=\"unrouted\"}";
    let before = counter(&h, series).await;
    let body = text_body("17841499999999999", "mid-nobody", "hello?");
    assert_eq!(deliver(&h, &body, IG_SECRET).await.status, 200);
    assert!(h.jobs().await.is_empty());
    assert!(counter(&h, series).await >= before + 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_event_shape_parses_and_integer_ids_keep_their_digits() {
    let h = Harness::start().await;
    let merchant = h.merchant_with_account(ACCOUNT).await;
    // entry.id as a bare integer (above 2^53).
    let int_id = format!(
        r#"{{"object":"instagram","entry":[{{"time":1762022388574,"id":{ACCOUNT},"messaging":[{{"sender":{{"id":"{CUSTOMER}"}},"recipient":{{"id":"{ACCOUNT}"}},"timestamp":1762022346848,"message":{{"mid":"mid-int","text":"x"}}}}]}}]}}"#
    );
    assert_eq!(deliver(&h, &int_id, IG_SECRET).await.status, 200);
    let jobs = h.jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].instagram_account_id, ACCOUNT);
    assert_eq!(jobs[0].merchant_id, merchant.0);

    let all_kinds = envelope(&[
        messaging_entry(
            ACCOUNT,
            1_762_031_000_500,
            vec![
                wh::postback(
                    CUSTOMER,
                    ACCOUNT,
                    "mid-pb",
                    "Track my order",
                    "TRACK_ORDER",
                    1_762_030_999_800,
                ),
                wh::edit(CUSTOMER, ACCOUNT, "mid-ed", "Size M", 1, 1_762_031_000_000),
                wh::referral(CUSTOMER, ACCOUNT, "ig.me-ref", 1_762_031_000_100),
                serde_json::json!({"sender":{"id":CUSTOMER},"recipient":{"id":ACCOUNT},"timestamp":1_762_031_000_200_i64,
                                   "message":{"mid":"mid-img","attachments":[{"type":"image","payload":{"url":"https://cdn.example/a.jpg"}}],"reply_to":{"mid":"mid-pb"}}}),
                serde_json::json!({"sender":{"id":CUSTOMER},"recipient":{"id":ACCOUNT},"timestamp":1_762_031_000_300_i64,
                                   "message":{"mid":"mid-unsup","is_unsupported":true}}),
                serde_json::json!({"sender":{"id":ACCOUNT},"recipient":{"id":ACCOUNT},"timestamp":1_762_031_000_400_i64,
                                   "message":{"mid":"mid-self","text":"test","is_self":true}}),
                serde_json::json!({"sender":{"id":CUSTOMER},"recipient":{"id":ACCOUNT},"timestamp":1_762_031_000_500_i64,
                                   "brand_new_event":{"x":1}}),
            ],
        ),
        wh::comment_entry(
            ACCOUNT,
            1_762_034_000,
            "17865799348089039",
            CUSTOMER,
            "18077777777777777",
            "Preço?",
            None,
        ),
    ]);
    let unknown_before = counter(
        &h,
        "igsales_webhook_events_total{kind=\"unknown\",result=\"ignored\"}",
    )
    .await;
    assert_eq!(deliver(&h, &all_kinds, IG_SECRET).await.status, 200);
    let mut kinds: Vec<(String, String)> = h
        .jobs()
        .await
        .into_iter()
        .map(|j| {
            (
                serde_json::to_value(j.kind)
                    .expect("kind")
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                j.event_id,
            )
        })
        .collect();
    kinds.sort();
    let names: Vec<&str> = kinds.iter().map(|(k, _)| k.as_str()).collect();
    // is_self and the unknown event are skipped; the rest each became a job.
    assert_eq!(
        names,
        [
            "comment", "edit", "message", "message", "message", "postback", "referral"
        ],
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|(_, id)| id == "edit:mid-ed:1"));
    assert!(kinds.iter().any(|(_, id)| id == "postback:mid-pb"));
    // A comment carries Meta's own id; a referral has none, so its bytes are hashed.
    assert!(
        kinds
            .iter()
            .any(|(k, id)| k == "comment" && id == "comment:17865799348089039")
    );
    assert!(
        kinds
            .iter()
            .filter(|(k, _)| k == "referral")
            .all(|(_, id)| id.starts_with("h:") && id.len() == 66)
    );
    assert!(
        counter(
            &h,
            "igsales_webhook_events_total{kind=\"unknown\",result=\"ignored\"}"
        )
        .await
            >= unknown_before + 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_leaves_a_job_for_every_claim() {
    let h = Harness::start().await;
    let merchant = h.merchant_with_account(ACCOUNT).await;
    let addr = h.base.trim_start_matches("http://").to_owned();
    let mut mids = Vec::new();
    for i in 0..30 {
        let mid = format!("mid-hangup-{i}");
        let body = text_body(ACCOUNT, &mid, "oi");
        let sig = signature_256(IG_SECRET, body.as_bytes());
        let req = format!(
            "POST /webhooks/instagram HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-Hub-Signature-256: {sig}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let a = addr.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(&a).expect("connect");
            s.write_all(req.as_bytes()).expect("write");
            // Hang up at once, before any answer.
            drop(s);
        })
        .await
        .expect("join");
        mids.push(mid);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let jobs = h.jobs().await;
    let mut conn = h.redis_conn().await;
    for mid in &mids {
        let event_id = format!("message:{mid}");
        let claimed: bool = redis::cmd("EXISTS")
            .arg(igsales_ingress_claim_key(merchant.0, &event_id))
            .query_async(&mut conn)
            .await
            .expect("exists");
        let has_job = jobs.iter().any(|j| j.event_id == event_id);
        assert!(!claimed || has_job, "{event_id}: a claim without a job");
    }
    // Handlers did run after the hang-up (else the check above would hold vacuously).
    assert!(!jobs.is_empty(), "no delivery was processed");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_means_503_and_the_same_delivery_succeeds_once_it_is_back() {
    let mut private = igsales_tests::PrivateRedis::start();
    let url = private.url();
    let h = Harness::start_with(|s| {
        s.redis.url = igsales_config::RedisUrl::parse(&url).expect("url");
    })
    .await;
    h.merchant_with_account(ACCOUNT).await;
    let body = text_body(ACCOUNT, "mid-during-outage", "oi");

    private.stop();
    let r = deliver(&h, &body, IG_SECRET).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "unavailable");

    private.restart();
    // The connection manager reconnects by itself; Meta's next attempt goes through.
    let mut status = 0;
    for _ in 0..50 {
        status = deliver(&h, &body, IG_SECRET).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    assert_eq!(deliver(&h, &body, IG_SECRET).await.status, 200);
    let client = redis::Client::open(url).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&igsales_tests::redis::test_client_config())
        .await
        .expect("conn");
    let jobs: i64 = redis::cmd("HLEN")
        .arg("inbound_event:data")
        .query_async(&mut conn)
        .await
        .expect("hlen");
    assert_eq!(jobs, 1, "one job for the event, whatever the outage did");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_down_for_an_uncached_account_means_503() {
    let h = Harness::start().await;
    // Same app, but its pool points at a closed port.
    let mut s = h.state.settings.clone();
    s.db = common::db_settings_at("postgres://app@127.0.0.1:1/none");
    let redis = igsales_jobs::redis_conn::connect(&s.redis)
        .await
        .expect("redis");
    let state = igsales_ingress::AppState::new(s.clone(), igsales_schema::Db::pool(&s.db), redis);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, igsales_ingress::router(state)).await;
    });
    let body = text_body(ACCOUNT, "mid-no-db", "oi");
    let sig = signature_256(IG_SECRET, body.as_bytes());
    let r = post(
        format!("{base}/webhooks/instagram"),
        body,
        vec![("X-Hub-Signature-256".into(), sig)],
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    let ready = get(format!("{base}/readyz"), vec![]).await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.json(),
        serde_json::json!({"redis": "ok", "postgres": "error"})
    );
}

/// The ingress of `h`'s own shape, but talking to Redis through a proxy the test can stall.
async fn through_stallable_redis(
    adjust: impl FnOnce(&mut igsales_ingress::IngressSettings),
) -> (Harness, igsales_tests::proxy::Proxy) {
    let upstream = igsales_tests::proxy::target(&igsales_tests::redis::server());
    let proxy = igsales_tests::proxy::Proxy::start(upstream).await;
    let addr = proxy.addr();
    let h = Harness::start_with(|s| {
        let url = igsales_tests::proxy::through(s.redis.url.expose(), addr);
        s.redis.url = igsales_config::RedisUrl::parse(&url).expect("url");
        // Redis answers late, never "too late" for the client: only the deadline can cut.
        s.redis.response_timeout = Duration::from_secs(30);
        adjust(s);
    })
    .await;
    (h, proxy)
}

async fn inbound_jobs(h: &Harness) -> i64 {
    redis::cmd("HLEN")
        .arg("inbound_event:data")
        .query_async(&mut h.redis_conn().await)
        .await
        .expect("hlen")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_past_its_deadline_is_503_and_its_redelivery_makes_one_job() {
    let (h, proxy) = through_stallable_redis(|s| {
        s.webhook.deadline = Duration::from_millis(400);
    })
    .await;
    h.merchant_with_account(ACCOUNT).await;
    let body = text_body(ACCOUNT, "mid-stalled-redis", "oi");
    let deadline_before = counter(&h, "igsales_webhook_refused_total{reason=\"deadline\"}").await;

    // Redis hangs for 2 s: without a deadline the delivery would wait and then answer 200.
    proxy.stall();
    let unstall = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.unstall();
    };
    let (r, ()) = tokio::join!(deliver(&h, &body, IG_SECRET), unstall);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "unavailable");
    assert!(
        counter(&h, "igsales_webhook_refused_total{reason=\"deadline\"}").await > deadline_before
    );

    // Meta delivers again: whatever the late work finished is absorbed, never doubled.
    let mut status = 0;
    for _ in 0..50 {
        status = deliver(&h, &body, IG_SECRET).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(inbound_jobs(&h).await, 1, "one job for the event");
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_over_the_in_flight_bound_are_503_at_once() {
    let (h, proxy) = through_stallable_redis(|s| {
        s.webhook.max_in_flight = 2;
        s.webhook.deadline = Duration::from_secs(4);
    })
    .await;
    h.merchant_with_account(ACCOUNT).await;
    let overloaded_before =
        counter(&h, "igsales_webhook_refused_total{reason=\"overloaded\"}").await;

    proxy.stall();
    let (a, b) = (
        text_body(ACCOUNT, "mid-flight-a", "oi"),
        text_body(ACCOUNT, "mid-flight-b", "oi"),
    );
    let held = {
        let (h2, a2, b2) = (&h, a.clone(), b.clone());
        async move { tokio::join!(deliver(h2, &a2, IG_SECRET), deliver(h2, &b2, IG_SECRET)) }
    };
    let third = text_body(ACCOUNT, "mid-flight-c", "oi");
    let refused = async {
        for _ in 0..200 {
            if h.state.webhook_permits.available_permits() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(h.state.webhook_permits.available_permits(), 0);
        let r = deliver(&h, &third, IG_SECRET).await;
        proxy.unstall();
        r
    };
    let ((ra, rb), rc) = tokio::join!(held, refused);
    assert_eq!(rc.status, 503, "{}", rc.body);
    assert_eq!(rc.json()["error"]["code"], "unavailable");
    assert_eq!((ra.status, rb.status), (200, 200));
    assert!(
        counter(&h, "igsales_webhook_refused_total{reason=\"overloaded\"}").await
            > overloaded_before
    );
    assert_eq!(
        inbound_jobs(&h).await,
        2,
        "the refused delivery made nothing"
    );
    assert_eq!(deliver(&h, &third, IG_SECRET).await.status, 200);
    assert_eq!(inbound_jobs(&h).await, 3);
}

/// A demoted master still answers PING: readiness asks ROLE, and a replica is not ready.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_is_not_ready_and_its_webhooks_are_503() {
    let set = tokio::task::block_in_place(|| igsales_tests::sentinel::RedisSet::replicated(1));
    let replica = set.node_url(1, 0);
    let h = Harness::start_with(|s| {
        s.redis.url = igsales_config::RedisUrl::parse(&replica).expect("url");
    })
    .await;
    h.merchant_with_account(ACCOUNT).await;
    let ready = get(h.url("/readyz"), vec![]).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(
        ready.json(),
        serde_json::json!({"redis": "not_writable_master", "postgres": "ok"})
    );
    let r = deliver(&h, &text_body(ACCOUNT, "mid-on-replica", "oi"), IG_SECRET).await;
    assert_eq!(r.status, 503, "{}", r.body);
}

/// REDIS_MIN_REPLICAS_ACK: 200 only once a replica holds the job and its claim; with no
/// replica to acknowledge, 503, and the redelivery is not waved through as a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn with_min_replicas_ack_a_delivery_is_200_only_once_a_replica_holds_it() {
    let mut set = tokio::task::block_in_place(|| igsales_tests::sentinel::RedisSet::replicated(1));
    let primary = set.node_url(0, 0);
    let h = Harness::start_with(|s| {
        s.redis.url = igsales_config::RedisUrl::parse(&primary).expect("url");
        s.webhook.min_replicas_ack = 1;
        s.webhook.wait_timeout = Duration::from_millis(300);
    })
    .await;
    h.merchant_with_account(ACCOUNT).await;
    let count_on = |set: &igsales_tests::sentinel::RedisSet, node: usize| -> (i64, usize) {
        let mut c = set.connection(set.node_port(node));
        let jobs: i64 = redis::cmd("HLEN")
            .arg("inbound_event:data")
            .query(&mut c)
            .expect("hlen");
        let claims: Vec<String> = redis::cmd("KEYS")
            .arg("dedupe:*")
            .query(&mut c)
            .expect("keys");
        (jobs, claims.len())
    };

    let r = deliver(&h, &text_body(ACCOUNT, "mid-acked", "oi"), IG_SECRET).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(count_on(&set, 1), (1, 1), "the replica holds job and claim");

    tokio::task::block_in_place(|| set.kill(1));
    let series = "igsales_webhook_refused_total{reason=\"replicas\"}";
    let refused = counter(&h, series).await;
    let body = text_body(ACCOUNT, "mid-unacked", "oi");
    let r = deliver(&h, &body, IG_SECRET).await;
    assert_eq!(r.status, 503, "{}", r.body);
    // The primary has claim and job now, but no replica does: the redelivery waits again.
    let r = deliver(&h, &body, IG_SECRET).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(counter(&h, series).await >= refused + 2.0);
    assert_eq!(count_on(&set, 0), (2, 2));

    let primary_port = set.node_port(0);
    tokio::task::block_in_place(|| set.restart_as_replica(1, primary_port));
    let r = deliver(&h, &body, IG_SECRET).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        count_on(&set, 1),
        (2, 2),
        "one job per event, on the replica too"
    );
}
