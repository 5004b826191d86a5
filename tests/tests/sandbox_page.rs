//! The sandbox's DM thread page in a real browser: Debian's headless Chromium through
//! chromedriver, against the whole stack (real ingress and worker, Postgres, Redis, the fake
//! Instagram and the offline model). It types as the customer, taps a quick reply and a card's
//! postback button, and checks what the page shows against what the fake Instagram received.
//! Needs `/usr/bin/chromium` and `chromedriver` (`.ci/run` installs them when missing).

use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use igsales_tests::process::{Process, free_port};
use igsales_tests::stack::{Stack, StackConfig};
use igsales_tests::{TestDb, TestRedis};
use serde_json::{Value, json};

const CUSTOMER: &str = "1177005554443332";
/// Long enough for a cold worker on a loaded CI machine; the loops end as soon as it shows.
const PATIENCE: Duration = Duration::from_secs(45);

async fn browser(driver_port: u16, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            // The machine's network is closed: background connections would only be refused.
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let url = format!("http://127.0.0.1:{driver_port}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("chromedriver not ready yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no browser session: {e}"),
        }
    }
}

/// The texts of the elements `css` matches, once there are at least `n` of them.
async fn texts_once(c: &Client, css: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found = c.find_all(Locator::Css(css)).await.expect("find");
        if found.len() >= n {
            // The page re-renders when the thread changes: an element found just before a
            // render is stale, and the whole lookup is made again.
            let wanted = found.len();
            let mut out = Vec::new();
            for e in found {
                match e.text().await {
                    Ok(t) => out.push(t),
                    Err(_) => break,
                }
            }
            if out.len() == wanted {
                return out;
            }
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} of {css} on the page after {PATIENCE:?}: {}",
            c.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The messages the account sent the customer, as the fake Instagram received them.
fn received(s: &Stack) -> Vec<Value> {
    s.fake
        .sent_messages()
        .into_iter()
        .filter(|m| m.recipient_id == CUSTOMER)
        .map(|m| m.body.get("message").cloned().unwrap_or(Value::Null))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dm_thread_page_shows_replies_and_sends_taps_as_meta_would() {
    let (db, redis) = (TestDb::migrated().await, TestRedis::lease().await);
    let s = Stack::start(StackConfig {
        database_url: db.app_url(),
        redis_url: redis.url(),
        model: None,
        worker_env: vec![("ECHO_CONFIRM_SECS", "2".into())],
    })
    .await
    .expect("stack");
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
    igsales_tests::sandbox_page::set_up_demo_post(&s, &merchant).expect("demo post");

    let s = std::sync::Arc::new(s);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let page = format!("http://{}/", listener.local_addr().expect("addr"));
    let app = igsales_tests::sandbox_page::router(s.clone(), CUSTOMER);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let driver_port = free_port();
    let profile = std::env::temp_dir().join(format!("igsales-chromium-{}", uuid::Uuid::new_v4()));
    let home = std::env::temp_dir().to_string_lossy().into_owned();
    let _driver = Process::start(
        "chromedriver",
        &[&format!("--port={driver_port}")],
        &[("HOME", home)],
        driver_port,
    );
    let c = browser(driver_port, &profile).await;
    c.goto(&page).await.expect("open the page");
    let who = texts_once(&c, "#who", 1).await;
    assert_eq!(who, vec![format!("@{}", s.account.username)]);

    // The customer writes in the composer, as on Instagram.
    let input = c
        .find(Locator::Css("[data-testid=composer]"))
        .await
        .expect("composer");
    input
        .send_keys("quanto custa a caneca azul?")
        .await
        .expect("type");
    c.find(Locator::Css("[data-testid=send]"))
        .await
        .expect("send button")
        .click()
        .await
        .expect("send");
    let mine = texts_once(&c, "[data-testid=customer-bubble]", 1).await;
    assert_eq!(mine, vec!["quanto custa a caneca azul?".to_owned()]);

    // The text, then the product's card with its picture, price and link, then the chips.
    let cards = texts_once(&c, "[data-testid=card]", 1).await;
    let chips = texts_once(&c, "[data-testid=quick-reply]", 1).await;
    let replies = texts_once(&c, "[data-testid=account-bubble]", 1).await;
    let sent = received(&s);
    assert_eq!(sent.len(), 2, "text, then one card message: {sent:#?}");
    assert_eq!(
        replies,
        vec![sent[0]["text"].as_str().expect("text").trim().to_owned()]
    );
    assert!(
        replies[0].contains("Caneca de cerâmica azul"),
        "{}",
        replies[0]
    );
    let element = &sent[1]["attachment"]["payload"]["elements"][0];
    assert_eq!(element["title"], "Caneca de cerâmica azul");
    assert!(
        cards[0].contains("Caneca de cerâmica azul") && cards[0].contains("R$ 39,90"),
        "{}",
        cards[0]
    );
    let img = c
        .find(Locator::Css("[data-testid=card] img"))
        .await
        .expect("card picture");
    assert_eq!(
        img.attr("src").await.expect("src").as_deref(),
        Some("https://loja-azul.example/img/caneca-azul.jpg")
    );
    let link = c
        .find(Locator::Css("[data-testid=card-link]"))
        .await
        .expect("card link");
    assert_eq!(
        link.attr("href").await.expect("href").as_deref(),
        Some("https://loja-azul.example/p/caneca-azul")
    );
    let offered: Vec<String> = sent[1]["quick_replies"]
        .as_array()
        .expect("quick replies on the last message")
        .iter()
        .map(|q| q["title"].as_str().expect("title").to_owned())
        .collect();
    assert_eq!(chips, offered, "the chips are the quick replies sent");

    // A tapped chip goes back as a message with its payload, and is answered.
    c.find(Locator::Css("[data-testid=quick-reply]"))
        .await
        .expect("chip")
        .click()
        .await
        .expect("tap the chip");
    let mine = texts_once(&c, "[data-testid=customer-bubble]", 2).await;
    assert_eq!(mine[1], chips[0], "the tap shows as the customer's line");
    let replies = texts_once(&c, "[data-testid=account-bubble]", 2).await;
    assert_ne!(replies[1], replies[0], "the tap got its own answer");
    let delivered = s.fake.sent_count();

    // The card's "I want this" button is a postback about its product, answered about it.
    let postbacks = c
        .find_all(Locator::Css("[data-testid=card-postback]"))
        .await
        .expect("postback buttons");
    postbacks[0].click().await.expect("tap the card's button");
    let replies = texts_once(&c, "[data-testid=account-bubble]", 3).await;
    assert!(
        replies[2].contains("Caneca de cerâmica azul"),
        "the postback is answered about the card's product: {}",
        replies[2]
    );
    assert!(s.fake.sent_count() > delivered);
    let texts: Vec<String> = received(&s)
        .iter()
        .filter_map(|m| m["text"].as_str().map(|t| t.trim().to_owned()))
        .collect();
    assert_eq!(texts, replies, "each answer sent once and shown once");

    // A comment under the demo post: its private reply arrives in the thread, labelled with
    // the comment, and the public reply shows under it; once each.
    let caption = texts_once(&c, "#caption", 1).await;
    assert_eq!(caption, [igsales_tests::sandbox_page::DEMO_POST_CAPTION]);
    c.find(Locator::Css("[data-testid=comment-box]"))
        .await
        .expect("comment box")
        .send_keys("quero! quanto custa?")
        .await
        .expect("type the comment");
    c.find(Locator::Css("[data-testid=comment-send]"))
        .await
        .expect("post button")
        .click()
        .await
        .expect("post the comment");
    let comments = texts_once(&c, "[data-testid=comment]", 1).await;
    assert_eq!(comments, ["you: quero! quanto custa?"]);
    let about = texts_once(&c, "[data-testid=private-reply-about]", 1).await;
    assert_eq!(about, ["Replied to your comment: quero! quanto custa?"]);
    let replies = texts_once(&c, "[data-testid=account-bubble]", 4).await;
    let private = s.fake.private_replies();
    assert_eq!(private.len(), 1, "one private reply: {private:?}");
    assert_eq!(private[0].recipient_id, CUSTOMER);
    assert_eq!(
        replies[3],
        private[0].text.as_deref().expect("text").trim(),
        "the thread shows the private reply"
    );
    assert!(
        replies[3].contains("Caneca de cerâmica azul"),
        "about the post's product: {}",
        replies[3]
    );
    let public = texts_once(&c, "[data-testid=public-reply]", 1).await;
    assert_eq!(public, [igsales_tests::sandbox_page::DEMO_PUBLIC_REPLY]);
    assert_eq!(s.fake.public_replies().len(), 1);

    let _ = c.close().await;
    let _ = std::fs::remove_dir_all(&profile);
}
