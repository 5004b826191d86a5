//! What a DM comes with, through the real ingress and worker: story replies and mentions,
//! shared posts (their caption and linked products), ig.me referrals (the event and a first
//! message's), customer photos as image inputs (`OPENAI_VISION=on`), and reactions kept on the
//! message and shown in the history. Each is checked in what the fake model was asked, what
//! was stored, and what the fake Meta received.
//! Run alone with `cargo build --bin ingress --bin worker && cargo test -p igsales-tests --test context`.

use std::time::Duration;

use igsales_tests::fake_llm::LlmRequest;
use igsales_tests::fake_meta::webhook as wh;
use igsales_tests::stack::{Stack, StackConfig};
use igsales_tests::{TestDb, TestRedis};

const POST: &str = "18000000000000077";
const WAIT: Duration = Duration::from_secs(15);

fn mid() -> String {
    format!("mid-{}", uuid::Uuid::new_v4().simple())
}

/// Delivers `event` from `customer`, waits for the one reply it gets, and returns the model
/// request that made it.
async fn answered(s: &Stack, customer: &str, event: serde_json::Value) -> LlmRequest {
    let llm = s.llm.as_ref().expect("fake model");
    let (calls, seen) = (llm.requests().len(), s.replies_to(customer));
    assert_eq!(s.send_events(vec![event]).await.expect("deliver"), 200);
    assert!(
        s.next_reply(customer, seen, WAIT).await.is_some(),
        "{customer} got no reply"
    );
    let requests = llm.requests();
    assert!(requests.len() > calls, "no model call");
    requests.last().cloned().expect("a model call")
}

/// The SKUs of the catalog lines of the system prompt, in order.
fn catalog(req: &LlmRequest) -> Vec<String> {
    let system = req.messages.first().map(|(_, c)| c.as_str()).unwrap_or("");
    system
        .lines()
        .filter_map(|l| l.split("(SKU ").nth(1))
        .filter_map(|rest| rest.split(')').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn stories_posts_referrals_photos_and_reactions_reach_the_model() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let s = Stack::start(StackConfig {
        database_url: db.app_url(),
        redis_url: redis.url(),
        model: None,
        worker_env: vec![("OPENAI_VISION", "on".into())],
    })
    .await
    .expect("stack");
    let merchant = s
        .worker_cli(&["merchant", "create", "--name", "Loja Azul"])
        .expect("merchant")
        .trim()
        .to_owned();
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo-catalog.csv");
    s.worker_cli(&["catalog", "import", "--merchant", &merchant, demo])
        .expect("catalog");
    s.connect_account(&merchant).await.expect("connect flow");
    for (flag, key, sku) in [
        ("--media", POST, "MUG-CER-01"),
        ("--ref", "natal", "TEE-BLK-M"),
    ] {
        s.worker_cli(&[
            "catalog",
            "link",
            "--merchant",
            &merchant,
            flag,
            key,
            "--sku",
            sku,
        ])
        .expect("link");
    }
    let account = s.account.user_id.clone();
    let now = wh::now_ms;

    // A story reply: the model is told; the story's id and CDN URL are kept, not its media.
    let m = mid();
    let req = answered(
        &s,
        "5552001",
        wh::story_reply("5552001", &account, &m, "ainda tem?", "17990001", now()),
    )
    .await;
    let user = req.last("user").expect("user");
    assert!(user.contains("ainda tem?"), "{user}");
    assert!(
        user.contains("replying to one of the shop's stories"),
        "{user}"
    );
    assert_eq!(
        db.strings(&format!(
            "SELECT reply_to->'story'->>'id' AS s FROM messages WHERE mid = '{m}'"
        ))
        .await,
        ["17990001"]
    );

    // A story mention has no text and is still answered, with a thank-you note.
    let m = mid();
    let req = answered(
        &s,
        "5552002",
        wh::story_mention("5552002", &account, &m, now()),
    )
    .await;
    let user = req.last("user").expect("user");
    assert!(
        user.contains("mentioned the shop in their own story"),
        "{user}"
    );
    assert_eq!(
        db.strings(&format!(
            "SELECT attachments->0->>'type' AS s FROM messages WHERE mid = '{m}'"
        ))
        .await,
        ["story_mention"]
    );

    // A shared post of the shop's: its caption is in the prompt and its linked product first.
    let req = answered(
        &s,
        "5552003",
        wh::shared_post(
            "5552003",
            &account,
            &mid(),
            POST,
            "Caneca nova na loja",
            now(),
        ),
    )
    .await;
    let user = req.last("user").expect("user");
    assert!(user.contains("Caneca nova na loja"), "{user}");
    assert_eq!(
        catalog(&req).first().map(String::as_str),
        Some("MUG-CER-01")
    );

    // An ig.me link's referral event, then a message: the ref and its product reach the model.
    assert_eq!(
        s.send_events(vec![wh::referral("5552004", &account, "natal", now())])
            .await
            .expect("deliver"),
        200
    );
    let recorded = db
        .strings_eventually(
            "SELECT referral_ref AS s FROM conversations WHERE customer_igsid = '5552004'",
        )
        .await;
    assert_eq!(recorded, ["natal"]);
    let req = answered(
        &s,
        "5552004",
        wh::text_message("5552004", &account, &mid(), "oi, quero ver", now()),
    )
    .await;
    assert!(req.last("user").expect("user").contains("ref \"natal\""));
    assert_eq!(catalog(&req).first().map(String::as_str), Some("TEE-BLK-M"));

    // A first message that carries the referral itself.
    let req = answered(
        &s,
        "5552005",
        wh::message_with_referral("5552005", &account, &mid(), "oi", "natal", now()),
    )
    .await;
    assert!(req.last("user").expect("user").contains("ref \"natal\""));
    assert_eq!(catalog(&req).first().map(String::as_str), Some("TEE-BLK-M"));
    assert_eq!(
        db.strings("SELECT referral_ref AS s FROM conversations WHERE customer_igsid = '5552005'")
            .await,
        ["natal"]
    );

    // A photo goes to the model as an image input, by its CDN URL.
    let url = "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=180434&signature=x";
    let req = answered(
        &s,
        "5552006",
        wh::photo("5552006", &account, &mid(), Some("tem essa?"), url, now()),
    )
    .await;
    assert_eq!(req.images, [url]);
    assert!(req.last("user").expect("user").contains("attached photo"));

    // A reaction to our reply is kept on it (once its echo stored it) and shown next time.
    let reply_mid = s
        .fake
        .sent_messages()
        .into_iter()
        .find(|m| m.recipient_id == "5552001" && m.text.is_some())
        .expect("the story reply's answer")
        .message_id;
    let stored = !db
        .strings_eventually(&format!(
            "SELECT mid AS s FROM messages WHERE mid = '{reply_mid}'"
        ))
        .await
        .is_empty();
    assert!(stored, "the reply's echo was not stored");
    assert_eq!(
        s.send_events(vec![wh::reaction(
            "5552001",
            &account,
            &reply_mid,
            "react",
            "\u{2764}\u{fe0f}",
            now()
        )])
        .await
        .expect("deliver"),
        200
    );
    let reacted = db
        .strings_eventually(&format!(
            "SELECT reaction AS s FROM messages WHERE mid = '{reply_mid}' AND reaction IS NOT NULL"
        ))
        .await;
    assert_eq!(reacted, ["\u{2764}\u{fe0f}"]);
    let req = answered(
        &s,
        "5552001",
        wh::text_message("5552001", &account, &mid(), "e o preço?", now()),
    )
    .await;
    assert!(
        req.messages.iter().any(|(role, c)| role == "assistant"
            && c.contains("[the customer reacted \u{2764}\u{fe0f} to this message]")),
        "{:?}",
        req.messages
    );
    // Taking the reaction back clears it.
    assert_eq!(
        s.send_events(vec![wh::reaction(
            "5552001",
            &account,
            &reply_mid,
            "unreact",
            "",
            now()
        )])
        .await
        .expect("deliver"),
        200
    );
    let cleared = !db
        .strings_eventually(&format!(
            "SELECT mid AS s FROM messages WHERE mid = '{reply_mid}' AND reaction IS NULL"
        ))
        .await
        .is_empty();
    assert!(cleared, "the unreaction was not recorded");
    // A reaction Meta delivers late (sent before the unreaction) does not bring it back.
    assert_eq!(
        s.send_events(vec![wh::reaction(
            "5552001",
            &account,
            &reply_mid,
            "react",
            "\u{1f44d}",
            now() - 60_000
        )])
        .await
        .expect("deliver"),
        200
    );
    let handled = db
        .strings_eventually(
            "SELECT count(*)::text AS s FROM webhook_events WHERE kind = 'reaction' \
             AND processed_at IS NOT NULL HAVING count(*) = 3",
        )
        .await;
    assert_eq!(handled, ["3"], "the late reaction was not handled");
    assert_eq!(
        db.strings(&format!(
            "SELECT mid AS s FROM messages WHERE mid = '{reply_mid}' AND reaction IS NULL"
        ))
        .await,
        std::slice::from_ref(&reply_mid),
        "an older reaction must not undo a newer unreaction"
    );
    // Every customer got exactly one reply per message, nothing twice.
    for (customer, n) in [
        ("5552001", 2),
        ("5552002", 1),
        ("5552003", 1),
        ("5552004", 1),
        ("5552005", 1),
        ("5552006", 1),
    ] {
        assert_eq!(s.replies_to(customer), n, "{customer}");
    }
}
