//! The Instagram connect flow end to end against the fake Meta, and the account list.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{ADMIN, FAILURE_URL, Harness, SUCCESS_URL};
use diesel::QueryableByName;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use igsales_schema::MerchantId;
use igsales_tests::fake_meta::{Endpoint, Failure, FakeAccount, TokenShape};
use igsales_tests::http::{Answer, get, post};

fn query_of(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .expect("absolute URL")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn bearer() -> Vec<(String, String)> {
    vec![("Authorization".into(), format!("Bearer {ADMIN}"))]
}

/// One browser's flow up to Instagram's redirect back to us.
struct Flow {
    state: String,
    cookie: String,
    challenge: String,
    authorize: HashMap<String, String>,
    callback_url: String,
}

async fn connect(h: &Harness, merchant: MerchantId) -> String {
    let r = post(
        h.url(&format!("/v1/merchants/{merchant}/instagram/connect")),
        String::new(),
        bearer(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = r.json();
    assert_eq!(
        body["expires_in"],
        h.state.settings.oauth.state_ttl.as_secs()
    );
    body["start_url"].as_str().expect("start_url").to_owned()
}

async fn begin(h: &Harness, merchant: MerchantId) -> Flow {
    let start_url = connect(h, merchant).await;
    assert!(
        start_url.starts_with(&h.url("/oauth/instagram/start?ticket=")),
        "{start_url}"
    );
    let start = get(start_url, vec![]).await;
    assert_eq!(start.status, 302);
    let location = start.header("location").expect("location").to_owned();
    let set_cookie = start.header("set-cookie").expect("cookie").to_owned();
    assert!(set_cookie.contains("Path=/oauth/instagram") && set_cookie.contains("HttpOnly"));
    let max_age = format!("Max-Age={}", h.state.settings.oauth.state_ttl.as_secs());
    assert!(set_cookie.contains("SameSite=Lax") && set_cookie.contains(&max_age));
    let cookie = set_cookie.split(';').next().expect("pair").to_owned();
    let authorize = query_of(&location);
    assert!(location.starts_with(&format!("{}/oauth/authorize?", h.fake.base_url())));
    // The browser goes to Instagram, which sends it back with a code.
    let back = get(location, vec![]).await;
    assert_eq!(back.status, 302, "{}", back.body);
    let callback_url = back.header("location").expect("location").to_owned();
    Flow {
        state: authorize["state"].clone(),
        cookie,
        challenge: authorize["code_challenge"].clone(),
        authorize,
        callback_url,
    }
}

/// The browser arriving at our callback; browsers drop the `#_` fragment.
async fn finish(flow: &Flow, cookie: Option<&str>) -> Answer {
    let url = flow.callback_url.split('#').next().expect("url").to_owned();
    let headers = cookie
        .map(|c| vec![("Cookie".to_owned(), c.to_owned())])
        .unwrap_or_default();
    get(url, headers).await
}

fn outcome(r: &Answer) -> (String, HashMap<String, String>) {
    assert_eq!(r.status, 302, "{}", r.body);
    let location = r.header("location").expect("location");
    let base = location.split('?').next().unwrap_or(location).to_owned();
    (base, query_of(location))
}

#[derive(QueryableByName, Debug)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::Text)]
    row: String,
}

/// Every row of every table, as text (seen by the superuser, past RLS).
async fn whole_database(h: &Harness) -> String {
    let mut su = h.db.superuser_conn().await;
    let mut all = String::new();
    for table in [
        "merchants",
        "instagram_accounts",
        "webhook_events",
        "conversations",
        "messages",
        "outbound_messages",
        "products",
        "data_deletion_requests",
    ] {
        let rows: Vec<Row> =
            diesel::sql_query(format!("SELECT row_to_json(t)::text AS row FROM {table} t"))
                .load(&mut su)
                .await
                .expect("dump");
        for r in rows {
            all.push_str(&r.row);
            all.push('\n');
        }
    }
    all
}

async fn accounts_of(h: &Harness, merchant: MerchantId) -> serde_json::Value {
    let r = get(
        h.url(&format!("/v1/merchants/{merchant}/instagram")),
        bearer(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn sha256_b64url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pkce_flow_connects_an_account_with_either_token_shape() {
    let h = Harness::start().await;
    // Meta delivers a first customer message the moment each subscription exists.
    h.fake
        .deliver_first_events_to(&h.url("/webhooks/instagram"), common::IG_SECRET);
    for (shape, account) in [
        (TokenShape::Flat, FakeAccount::default()),
        (
            TokenShape::DataArray,
            FakeAccount {
                user_id: "17841400000000777".into(),
                app_scoped_id: "27640875392278999".into(),
                username: "outraloja".into(),
            },
        ),
    ] {
        h.fake.set_token_shape(shape);
        h.fake.set_account(account.clone());
        h.fake.clear_requests();
        let merchant = h.merchant().await;
        let flow = begin(&h, merchant).await;
        let redirect_uri = h.url("/oauth/instagram/callback");
        assert_eq!(flow.authorize["redirect_uri"], redirect_uri);
        assert_eq!(flow.authorize["client_id"], common::APP_ID);
        assert_eq!(flow.authorize["response_type"], "code");
        assert_eq!(flow.authorize["code_challenge_method"], "S256");
        assert!(flow.authorize["scope"].contains("instagram_business_manage_messages"));
        assert!(flow.state.starts_with(&format!("{merchant}.")));

        let (to, q) = outcome(&finish(&flow, Some(&flow.cookie)).await);
        assert_eq!(to, SUCCESS_URL, "{q:?}");
        assert_eq!(q["merchant_id"], merchant.to_string());
        assert_eq!(q["instagram_username"], account.username);

        // What Meta received: the verifier matching the challenge, the exact redirect_uri.
        let exchange = h.fake.requests_to(Endpoint::CodeExchange);
        assert_eq!(exchange.len(), 1);
        let verifier = exchange[0]
            .form_field("code_verifier")
            .expect("code_verifier sent");
        assert_eq!(verifier.len(), 43);
        assert_eq!(sha256_b64url(verifier), flow.challenge);
        assert_eq!(
            exchange[0].form_field("redirect_uri"),
            Some(redirect_uri.as_str())
        );
        assert_eq!(
            exchange[0].form_field("client_secret"),
            Some(common::IG_SECRET)
        );
        assert_eq!(
            h.fake.subscribed_fields(&account.user_id).map(|mut f| {
                f.sort();
                f
            }),
            Some(vec![
                "comments".to_owned(),
                "message_reactions".to_owned(),
                "messages".to_owned(),
                "messaging_postbacks".to_owned(),
                "messaging_referral".to_owned(),
                "messaging_seen".to_owned()
            ])
        );

        // Stored: the account, encrypted; no token in plaintext anywhere in the database.
        let listed = accounts_of(&h, merchant).await;
        let accounts = listed["accounts"].as_array().expect("accounts");
        assert_eq!(accounts.len(), 1);
        assert_eq!(accounts[0]["instagram_account_id"], account.user_id);
        assert_eq!(accounts[0]["username"], account.username);
        assert_eq!(accounts[0]["needs_reauth"], false);
        assert!(accounts[0]["token_expires_at"].is_string());
        assert!(
            !listed.to_string().contains("IGAA"),
            "the API never shows a token"
        );
        let dump = whole_database(&h).await;
        assert!(dump.contains("\"token_ciphertext\":\"v1:"));
        for token in h.fake.issued_tokens() {
            assert!(!dump.contains(&token), "plaintext token stored");
        }
        assert!(accounts[0]["webhooks_subscribed_at"].is_string());
        // The event that arrived while the subscribe call was being answered found the
        // account stored: answered 200 and enqueued for this merchant, not dropped.
        let mid = format!("m_first_{}", account.user_id);
        assert!(
            h.fake.first_events().contains(&(mid.clone(), 200)),
            "{:?}",
            h.fake.first_events()
        );
        let enqueued: Vec<_> = h
            .jobs()
            .await
            .into_iter()
            .filter(|j| j.event_id == format!("message:{mid}"))
            .collect();
        assert_eq!(enqueued.len(), 1, "the first event became a job");
        assert_eq!(enqueued[0].merchant_id, merchant.0);
        // Webhooks for the account now route to the merchant.
        assert_eq!(
            h.app_db
                .merchant_for_instagram_account(&account.user_id)
                .await
                .expect("resolve"),
            Some(merchant)
        );
    }
}

/// Calls that reach Meta from our side (the authorize page is the browser's).
fn outbound(h: &Harness) -> usize {
    [
        Endpoint::CodeExchange,
        Endpoint::LongLivedExchange,
        Endpoint::Me,
        Endpoint::SubscribedApps,
    ]
    .into_iter()
    .map(|e| h.fake.requests_to(e).len())
    .sum()
}

fn assert_failed(r: &Answer, error: &str) {
    let (to, q) = outcome(r);
    assert_eq!(to, FAILURE_URL);
    assert_eq!(q.get("error").map(String::as_str), Some(error), "{q:?}");
    let cookie = r.header("set-cookie").unwrap_or("");
    assert!(
        cookie.contains("Max-Age=0"),
        "the flow cookie is cleared: {cookie}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_reused_or_unbound_states_fail_before_any_call_to_meta() {
    let h = Harness::start().await;
    let merchant = h.merchant().await;
    let other = h.merchant().await;

    // Reused: a completed flow's callback replayed.
    let done = begin(&h, merchant).await;
    let (to, _) = outcome(&finish(&done, Some(&done.cookie)).await);
    assert_eq!(to, SUCCESS_URL);
    h.fake.clear_requests();
    assert_failed(&finish(&done, Some(&done.cookie)).await, "invalid_state");

    let a = begin(&h, merchant).await;
    let b = begin(&h, merchant).await;
    // Missing cookie; another flow's cookie.
    assert_failed(&finish(&a, None).await, "invalid_state");
    assert_failed(&finish(&a, Some(&b.cookie)).await, "invalid_state");

    // Tampered state, even with a cookie that matches the tampered value.
    let tampered_state = format!("{}x", a.state);
    let tampered = Flow {
        callback_url: a
            .callback_url
            .replace(&url_enc(&a.state), &url_enc(&tampered_state)),
        cookie: format!("igs_oauth={}", sha256_b64url(&tampered_state)),
        state: tampered_state,
        challenge: String::new(),
        authorize: HashMap::new(),
    };
    assert_failed(
        &finish(&tampered, Some(&tampered.cookie)).await,
        "invalid_state",
    );

    // Cross-merchant: A's nonce presented for another merchant.
    let nonce = a.state.split_once('.').expect("state").1;
    let cross_state = format!("{other}.{nonce}");
    let cross = Flow {
        callback_url: a
            .callback_url
            .replace(&url_enc(&a.state), &url_enc(&cross_state)),
        cookie: format!("igs_oauth={}", sha256_b64url(&cross_state)),
        state: cross_state,
        challenge: String::new(),
        authorize: HashMap::new(),
    };
    assert_failed(&finish(&cross, Some(&cross.cookie)).await, "invalid_state");

    // An unknown ticket never sets a cookie.
    let r = get(h.url("/oauth/instagram/start?ticket=nope"), vec![]).await;
    assert_failed(&r, "invalid_state");

    assert_eq!(outbound(&h), 0, "no call may reach Meta for a bad state");
    // And the legitimate flows still work afterwards (their states were not consumed).
    assert_eq!(outcome(&finish(&b, Some(&b.cookie)).await).0, SUCCESS_URL);
}

fn url_enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_state_is_invalid() {
    let h = Harness::start_with(|s| s.oauth.state_ttl = Duration::from_secs(1)).await;
    let merchant = h.merchant().await;
    let flow = begin(&h, merchant).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_failed(&finish(&flow, Some(&flow.cookie)).await, "invalid_state");
    assert_eq!(outbound(&h), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn denial_ownership_and_meta_errors_store_nothing_but_a_stored_unsubscribed_account() {
    let h = Harness::start().await;
    let merchant = h.merchant().await;

    // The person said no on Instagram.
    h.fake.deny_next_authorization();
    let denied = begin(&h, merchant).await;
    assert!(denied.callback_url.contains("error=access_denied"));
    assert_failed(
        &finish(&denied, Some(&denied.cookie)).await,
        "access_denied",
    );

    // Meta's code exchange fails.
    h.fake.fail_next(
        Endpoint::CodeExchange,
        Failure::oauth("Matching code was not found or was already used"),
    );
    let f = begin(&h, merchant).await;
    assert_failed(&finish(&f, Some(&f.cookie)).await, "exchange_failed");
    // The long-lived exchange fails.
    h.fake
        .fail_next(Endpoint::LongLivedExchange, Failure::server_error(500));
    let f = begin(&h, merchant).await;
    assert_failed(&finish(&f, Some(&f.cookie)).await, "exchange_failed");
    assert_eq!(
        accounts_of(&h, merchant).await["accounts"],
        serde_json::json!([])
    );
    // Subscribing fails: the account is stored (it was, before the call), shown as not
    // subscribed, and connecting again completes it.
    h.fake
        .fail_next(Endpoint::SubscribedApps, Failure::token_expired());
    let f = begin(&h, merchant).await;
    assert_failed(&finish(&f, Some(&f.cookie)).await, "exchange_failed");
    let listed = accounts_of(&h, merchant).await["accounts"].clone();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert!(listed[0]["webhooks_subscribed_at"].is_null(), "{listed}");
    let f = begin(&h, merchant).await;
    assert_eq!(outcome(&finish(&f, Some(&f.cookie)).await).0, SUCCESS_URL);
    assert!(accounts_of(&h, merchant).await["accounts"][0]["webhooks_subscribed_at"].is_string());
    // Gone again, for the ownership case below.
    h.db.superuser_conn()
        .await
        .batch_execute(&format!(
            "DELETE FROM instagram_accounts WHERE merchant_id = '{merchant}'"
        ))
        .await
        .expect("delete");

    // The account already belongs to another merchant: refused, and it stays there.
    let owner = h
        .merchant_with_account(&FakeAccount::default().user_id)
        .await;
    h.fake.clear_requests();
    let f = begin(&h, merchant).await;
    assert_failed(&finish(&f, Some(&f.cookie)).await, "already_connected");
    assert!(
        h.fake.requests_to(Endpoint::SubscribedApps).is_empty(),
        "its subscription is not touched"
    );
    assert_eq!(
        accounts_of(&h, merchant).await["accounts"],
        serde_json::json!([])
    );
    assert_eq!(
        accounts_of(&h, owner).await["accounts"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        h.app_db
            .merchant_for_instagram_account(&FakeAccount::default().user_id)
            .await
            .expect("resolve"),
        Some(owner)
    );
    for token in h.fake.issued_tokens() {
        assert!(!whole_database(&h).await.contains(&token));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_v1_api_checks_bearer_id_and_merchant_and_sends_cors_only_to_allowed_origins() {
    let h = Harness::start().await;
    let merchant = h.merchant().await;
    let list = h.url(&format!("/v1/merchants/{merchant}/instagram"));
    let r = get(list.clone(), vec![]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    let r = get(
        list.clone(),
        vec![("Authorization".into(), "Bearer wrong".into())],
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(!r.body.contains(ADMIN));
    let r = get(h.url("/v1/merchants/not-a-uuid/instagram"), bearer()).await;
    assert_eq!(r.status, 400);
    let r = get(
        h.url(&format!(
            "/v1/merchants/{}/instagram",
            MerchantId::new_random()
        )),
        bearer(),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = post(
        h.url(&format!(
            "/v1/merchants/{}/instagram/connect",
            MerchantId::new_random()
        )),
        String::new(),
        bearer(),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = post(
        h.url("/v1/merchants/nope/instagram/connect"),
        String::new(),
        bearer(),
    )
    .await;
    assert_eq!(r.status, 400);

    let mut with_origin = bearer();
    with_origin.push(("Origin".into(), "https://dashboard.example".into()));
    let r = get(list.clone(), with_origin).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://dashboard.example")
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let mut evil = bearer();
    evil.push(("Origin".into(), "https://evil.example".into()));
    let r = get(list, evil).await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    // Not on the webhook route.
    let r = get(
        h.url("/healthz"),
        vec![("Origin".into(), "https://dashboard.example".into())],
    )
    .await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_that_arrives_with_the_trailing_hash_underscore_is_stripped() {
    let h = Harness::start().await;
    let merchant = h.merchant().await;
    let mut flow = begin(&h, merchant).await;
    let code = query_of(flow.callback_url.split('#').next().expect("url"))["code"].clone();
    flow.callback_url = flow
        .callback_url
        .replace(&format!("code={code}"), &format!("code={code}%23_"));
    assert_eq!(
        outcome(&finish(&flow, Some(&flow.cookie)).await).0,
        SUCCESS_URL
    );
    let exchange = h.fake.requests_to(Endpoint::CodeExchange);
    assert_eq!(exchange[0].form_field("code"), Some(code.as_str()));
}
