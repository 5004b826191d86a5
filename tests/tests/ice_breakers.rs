//! Ice breakers end to end: the operator sets them with `worker merchant ice-breakers` on the
//! account the merchant connected through OAuth, and a customer's tap on one (a `postback`
//! whose title is the question) reaches the real ingress and worker and is answered once.
//! Run alone with `cargo build --bin ingress --bin worker && cargo test -p igsales-tests --test ice_breakers`.

use std::time::{Duration, Instant};

use igsales_tests::fake_meta::webhook as wh;
use igsales_tests::stack::{Stack, StackConfig};
use igsales_tests::{TestDb, TestRedis};

const CUSTOMER: &str = "5552001";

#[tokio::test(flavor = "multi_thread")]
async fn a_tap_on_an_ice_breaker_is_answered_once_with_its_question_as_the_customers_words() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let s = Stack::start(StackConfig {
        database_url: db.app_url(),
        redis_url: redis.url(),
        model: None,
        worker_env: vec![],
    })
    .await
    .expect("stack");
    let merchant = s
        .worker_cli(&["merchant", "create", "--name", "Loja Azul"])
        .expect("merchant")
        .trim()
        .to_owned();
    s.connect_account(&merchant).await.expect("connect flow");
    let account = s.account.user_id.clone();

    let out = s
        .worker_cli(&[
            "merchant",
            "ice-breakers",
            "--merchant",
            &merchant,
            "--set",
            "Vocês entregam em Curitiba?|ICE:SHIPPING",
            "--set",
            "Posso trocar se não servir?|ICE:RETURNS",
        ])
        .expect("ice-breakers --set");
    assert!(
        out.contains(&format!("account {account}: 2 ice breaker(s) set")),
        "{out}"
    );
    let held = s.fake.ice_breakers(&account);
    assert_eq!(
        held,
        vec![
            (
                "Vocês entregam em Curitiba?".to_owned(),
                "ICE:SHIPPING".to_owned()
            ),
            (
                "Posso trocar se não servir?".to_owned(),
                "ICE:RETURNS".to_owned()
            ),
        ]
    );

    // The customer taps the first one: Meta sends its question as the postback's title.
    let (question, payload) = held[0].clone();
    let now = wh::now_ms();
    let body = wh::envelope(&[wh::messaging_entry(
        &account,
        now,
        vec![wh::postback(
            CUSTOMER,
            &account,
            "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDAwNTM4ODY3MTkwOjEwMDAwMDAwMDAwMDAwMDAwMQZDZD",
            &question,
            &payload,
            now,
        )],
    )]);
    let llm = s.llm.as_ref().expect("fake model");
    assert_eq!(s.deliver(body.clone()).await.expect("deliver"), 200);
    let got = s.messages_after(CUSTOMER, 0, Duration::from_secs(25)).await;
    assert_eq!(got.len(), 1, "one reply to the tap: {got:#?}");
    assert!(
        got[0]["text"].as_str().is_some_and(|t| !t.is_empty()),
        "{got:#?}"
    );
    let asked = llm.requests();
    assert!(!asked.is_empty(), "the model was asked");
    assert!(
        asked.iter().any(|r| r
            .last("user")
            .is_some_and(|u| u.contains("Vocês entregam em Curitiba?"))),
        "the question is the customer's message: {:?}",
        asked.last().map(|r| &r.messages)
    );

    // Meta redelivers the same webhook: the same event, nothing more is sent or asked.
    let model_calls = llm.request_count();
    assert_eq!(s.deliver(body).await.expect("redeliver"), 200);
    let quiet_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < quiet_until {
        assert_eq!(
            s.messages_to(CUSTOMER).len(),
            1,
            "a redelivery was answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(llm.request_count(), model_calls);
    assert_eq!(s.fake.sent_count(), 1, "{:?}", s.fake.sent_messages());
}
