//! The fake Meta itself, over real HTTP: it must answer as meta-platform.md documents, or the
//! service's tests prove nothing.
//!
//! Test bodies call blocking ureq directly: on the multi-thread runtime the test body runs on
//! its own thread and the fake is served by the workers.

use std::time::{Duration, Instant};

use igsales_tests::fake_meta::webhook::{self, escape_non_ascii, signature_256, signature_sha1};
use igsales_tests::fake_meta::{
    Endpoint, Failure, FakeAccount, FakeMeta, FakeMetaConfig, TokenShape,
};
use igsales_tests::http::{Answer, agent, answer};
use igsales_tests::process::{start_announced, terminate};
use serde_json::{Value, json};
use url::Url;

const REDIRECT: &str = "https://app.example.test/oauth/instagram/callback";
const SCOPES: &str = "instagram_business_basic,instagram_business_manage_messages";
/// meta-platform.md §1.2, byte for byte.
const FIXTURE: &str = r#"{"object":"instagram","entry":[{"time":1762022388574,"id":"17841400538867190","messaging":[{"sender":{"id":"1129842642640637"},"recipient":{"id":"17841400538867190"},"timestamp":1762022346848,"message":{"mid":"aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDAwNTM4ODY3MTkwOjM0MDI4MjM2Njg0MTcxMDMwMTI0NDI1ODU5OTE3NTI2OTQwODg3NjozMjUwMzU3NTI4NDQ2NDA1ODQ5NjkyMTc3NjY5OTczNjA2NAZDZD","text":"Ol\u00e1, tem em azul? \ud83d\udc99"}}]}]}"#;
const FIXTURE_MID: &str = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDAwNTM4ODY3MTkwOjM0MDI4MjM2Njg0MTcxMDMwMTI0NDI1ODU5OTE3NTI2OTQwODg3NjozMjUwMzU3NTI4NDQ2NDA1ODQ5NjkyMTc3NjY5OTczNjA2NAZDZD";

/// Meta's error envelope, read off an answer.
trait GraphError {
    fn graph_error(&self, status: u16, code: u64) -> Value;
}

impl GraphError for Answer {
    #[track_caller]
    fn graph_error(&self, status: u16, code: u64) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        let error = v
            .get("error")
            .unwrap_or_else(|| panic!("no error: {}", self.body));
        assert_eq!(error["type"], "OAuthException", "{}", self.body);
        assert_eq!(error["code"], code, "{}", self.body);
        assert!(error["fbtrace_id"].is_string(), "{}", self.body);
        error.clone()
    }
}

fn get(url: &str) -> Answer {
    answer(agent(Duration::from_secs(5)).get(url).call())
}

fn post_form(url: &str, fields: &[(&str, &str)]) -> Answer {
    answer(
        agent(Duration::from_secs(5))
            .post(url)
            .send_form(fields.iter().copied()),
    )
}

fn post_json(url: &str, token: &str, body: &Value) -> Answer {
    answer(
        agent(Duration::from_secs(5))
            .post(url)
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .send(body.to_string()),
    )
}

async fn fake() -> FakeMeta {
    FakeMeta::start(FakeMetaConfig {
        redirect_uris: vec![REDIRECT.to_owned()],
        ..FakeMetaConfig::default()
    })
    .await
}

fn authorize_url(fake: &FakeMeta, redirect_uri: &str, scope: &str, state: &str) -> String {
    let mut url = Url::parse(&format!("{}/oauth/authorize", fake.base_url())).expect("base url");
    url.query_pairs_mut()
        .append_pair("client_id", &FakeMetaConfig::default().client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("response_type", "code")
        .append_pair("scope", scope)
        .append_pair("state", state);
    url.to_string()
}

/// Runs the authorize step and returns the code from the 302's `Location`.
fn authorize(fake: &FakeMeta, state: &str) -> String {
    let a = get(&authorize_url(fake, REDIRECT, SCOPES, state));
    assert_eq!(a.status, 302, "{}", a.body);
    let location = a.header("location").expect("Location header");
    assert!(location.starts_with(REDIRECT), "{location}");
    assert!(location.ends_with("#_"), "{location}");
    let url = Url::parse(location).expect("Location is a URL");
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(param("state").as_deref(), Some(state));
    param("code").expect("code in Location")
}

fn exchange(fake: &FakeMeta, code: &str) -> Answer {
    let config = FakeMetaConfig::default();
    post_form(
        &format!("{}/oauth/access_token", fake.base_url()),
        &[
            ("client_id", config.client_id.as_str()),
            ("client_secret", config.client_secret.as_str()),
            ("grant_type", "authorization_code"),
            ("redirect_uri", REDIRECT),
            ("code", code),
            (
                "code_verifier",
                "ignored-because-instagram-documents-no-pkce",
            ),
        ],
    )
}

fn long_lived(fake: &FakeMeta, short: &str) -> Answer {
    get(&format!(
        "{}/access_token?grant_type=ig_exchange_token&client_secret={}&access_token={short}",
        fake.base_url(),
        FakeMetaConfig::default().client_secret
    ))
}

/// The whole dance down to a long-lived token.
fn connect(fake: &FakeMeta) -> String {
    let code = authorize(fake, "s");
    let short = exchange(fake, &code).json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    long_lived(fake, &short).json()["access_token"]
        .as_str()
        .expect("long-lived access_token")
        .to_owned()
}

fn send_url(fake: &FakeMeta, node: &str) -> String {
    format!("{}/v25.0/{node}/messages", fake.base_url())
}

fn text_body(text: &str) -> Value {
    json!({ "recipient": { "id": "1129842642640637" }, "message": { "text": text } })
}

#[test]
fn escaping_and_signatures_reproduce_the_documented_fixture() {
    let literal = FIXTURE
        .replace(r"\u00e1", "á")
        .replace(r"\ud83d\udc99", "💙");
    assert!(literal.contains("Olá") && literal.contains('💙'));
    let escaped = escape_non_ascii(&literal);
    assert_eq!(escaped, FIXTURE);
    assert_eq!(escaped.len(), 426);
    assert_eq!(
        signature_256("test_app_secret", escaped.as_bytes()),
        "sha256=d54d64374bb54b0d60bf5113d0e430540cad72b664dedc6e85406b3dbd0965b9"
    );
    assert_eq!(
        signature_sha1("test_app_secret", escaped.as_bytes()),
        "sha1=4fbd9aa494389fc3ea061550e804bc844a562e53"
    );
}

#[test]
fn builders_write_the_fixture_byte_for_byte() {
    let body = webhook::envelope(&[webhook::messaging_entry(
        "17841400538867190",
        1762022388574,
        vec![webhook::text_message(
            "1129842642640637",
            "17841400538867190",
            FIXTURE_MID,
            "Olá, tem em azul? 💙",
            1762022346848,
        )],
    )]);
    assert_eq!(body, FIXTURE);
}

#[test]
fn event_builders_follow_the_documented_shapes() {
    let (c, a) = ("1129842642640637", "17841400538867190");
    let echo = webhook::echo(a, c, "m1", "Yes!", 2);
    assert_eq!(echo["sender"]["id"], a);
    assert_eq!(echo["recipient"]["id"], c);
    assert_eq!(echo["message"]["is_echo"], true);
    assert_eq!(
        webhook::deleted(c, a, "m", 1)["message"]["is_deleted"],
        true
    );
    let postback = webhook::postback(c, a, "m", "Track", "TRACK", 1);
    assert_eq!(postback["postback"]["payload"], "TRACK");
    let react = webhook::reaction(c, a, "m", "react", "\u{2764}\u{fe0f}", 1);
    assert_eq!(react["reaction"]["reaction"], "love");
    assert_eq!(webhook::read(c, a, "m", 1)["read"]["mid"], "m");
    assert_eq!(
        webhook::edit(c, a, "m", "new", 2, 1)["message_edit"]["num_edit"],
        2
    );
    assert_eq!(
        webhook::referral(c, a, "promo", 1)["referral"]["ref"],
        "promo"
    );
    let comment = webhook::comment_entry(
        a,
        1762034000,
        "1786",
        c,
        "18077777777777777",
        "Preço?",
        None,
    );
    assert_eq!(comment["changes"][0]["field"], "comments");
    assert_eq!(comment["changes"][0]["value"]["from"]["id"], c);
    let body = webhook::envelope(&[comment, webhook::messaging_entry(a, 5, vec![react])]);
    assert!(body.is_ascii(), "{body}");
    assert!(body.contains(r#""emoji":"\u2764\ufe0f""#), "{body}");
    assert!(body.contains(r#""text":"Pre\u00e7o?""#), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flat_oauth_dance_keeps_the_user_id_digits_exact() {
    let fake = fake().await;
    let code = authorize(&fake, "csrf-123");
    let a = exchange(&fake, &code);
    assert_eq!(a.status, 200, "{}", a.body);
    // A bare integer above 2^53, written with its exact digits.
    assert!(
        a.body.contains(r#""user_id":27640875392278831,"#),
        "{}",
        a.body
    );
    let v = a.json();
    let short = v["access_token"].as_str().expect("access_token");
    assert!(short.starts_with("IGAA"));
    assert_eq!(
        v["permissions"],
        json!([
            "instagram_business_basic",
            "instagram_business_manage_messages"
        ])
    );

    let ll = long_lived(&fake, short);
    assert_eq!(ll.status, 200, "{}", ll.body);
    let ll = ll.json();
    assert_eq!(ll["token_type"], "bearer");
    assert_eq!(ll["expires_in"], 5183944);
    let long = ll["access_token"].as_str().expect("long-lived token");
    assert_ne!(long, short);

    let me = answer(
        agent(Duration::from_secs(5))
            .get(format!(
                "{}/v25.0/me?fields=user_id,username",
                fake.base_url()
            ))
            .header("Authorization", format!("Bearer {long}"))
            .call(),
    );
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(
        me.body,
        r#"{"user_id":"17841400538867190","username":"minhaloja","id":"27640875392278831"}"#
    );
    assert_eq!(me.header("facebook-api-version"), Some("v25.0"));

    let sub = get(&format!(
        "{}/v25.0/me/subscribed_apps?subscribed_fields=messages,messaging_seen&access_token={long}",
        fake.base_url()
    ));
    // A GET lists; the subscription itself is a POST.
    assert_eq!(sub.body, r#"{"data":[]}"#);
    let sub = answer(
        agent(Duration::from_secs(5))
            .post(format!(
                "{}/v24.0/17841400538867190/subscribed_apps?subscribed_fields=messages,messaging_seen",
                fake.base_url()
            ))
            .header("Authorization", format!("Bearer {long}"))
            .send_empty(),
    );
    assert_eq!(
        (sub.status, sub.body.as_str()),
        (200, r#"{"success":true}"#)
    );
    assert_eq!(
        fake.subscribed_fields("17841400538867190"),
        Some(vec!["messages".to_owned(), "messaging_seen".to_owned()])
    );
    assert_eq!(
        fake.issued_tokens(),
        vec![short.to_owned(), long.to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_array_shape_wraps_a_string_user_id_and_joined_permissions() {
    let fake = fake().await;
    fake.set_token_shape(TokenShape::DataArray);
    let code = authorize(&fake, "s");
    let a = exchange(&fake, &code);
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    let item = &v["data"][0];
    assert_eq!(item["user_id"], "27640875392278831");
    assert_eq!(
        item["permissions"],
        "instagram_business_basic,instagram_business_manage_messages"
    );
    let short = item["access_token"].as_str().expect("access_token");
    assert_eq!(long_lived(&fake, short).status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_or_mismatched_codes_get_the_oauth_error_envelope() {
    let fake = fake().await;
    let expected = json!({
        "error_type": "OAuthException",
        "code": 400,
        "error_message": "Matching code was not found or was already used",
    });
    let code = authorize(&fake, "s");
    assert_eq!(exchange(&fake, &code).status, 200);
    let reused = exchange(&fake, &code);
    assert_eq!(reused.status, 400);
    assert_eq!(reused.json(), expected);
    assert_eq!(exchange(&fake, &format!("{code}#_")).json(), expected);

    let code = authorize(&fake, "s");
    let config = FakeMetaConfig::default();
    let other_redirect = post_form(
        &format!("{}/oauth/access_token", fake.base_url()),
        &[
            ("client_id", config.client_id.as_str()),
            ("client_secret", config.client_secret.as_str()),
            ("grant_type", "authorization_code"),
            (
                "redirect_uri",
                "https://app.example.test/oauth/instagram/callback/",
            ),
            ("code", &code),
        ],
    );
    assert_eq!(
        (other_redirect.status, other_redirect.json()),
        (400, expected)
    );
    let wrong_secret = post_form(
        &format!("{}/oauth/access_token", fake.base_url()),
        &[
            ("client_id", config.client_id.as_str()),
            ("client_secret", "nope"),
            ("grant_type", "authorization_code"),
            ("redirect_uri", REDIRECT),
            ("code", &code),
        ],
    );
    assert_eq!(wrong_secret.status, 400);
    assert_eq!(wrong_secret.json()["error_type"], "OAuthException");
    // Neither failed attempt used the code up.
    assert_eq!(exchange(&fake, &code).status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_validates_the_request_and_can_be_denied() {
    let fake = fake().await;
    let bad = get(&authorize_url(
        &fake,
        "https://evil.example/cb",
        SCOPES,
        "s",
    ));
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error_message"], "Invalid redirect_uri");
    let no_basic = get(&authorize_url(
        &fake,
        REDIRECT,
        "instagram_business_manage_messages",
        "s",
    ));
    assert_eq!(no_basic.status, 400);
    let old_names = get(&authorize_url(&fake, REDIRECT, "business_basic", "s"));
    assert_eq!(old_names.status, 400);

    fake.deny_next_authorization();
    let denied = get(&authorize_url(&fake, REDIRECT, SCOPES, "xyz"));
    assert_eq!(denied.status, 302);
    assert_eq!(
        denied.header("location"),
        Some(
            "https://app.example.test/oauth/instagram/callback?error=access_denied\
             &error_reason=user_denied&error_description=The+user+denied+your+request&state=xyz"
        )
    );
    // Only the next one.
    authorize(&fake, "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_recorded_with_form_fields_including_pkce_ones() {
    let fake = fake().await;
    let code = authorize(&fake, "s");
    let url = format!(
        "{}&code_challenge=abc&code_challenge_method=S256",
        authorize_url(&fake, REDIRECT, SCOPES, "t")
    );
    assert_eq!(get(&url).status, 302, "PKCE parameters are ignored");
    assert_eq!(exchange(&fake, &code).status, 200);

    let authorizes = fake.requests_to(Endpoint::Authorize);
    assert_eq!(authorizes.len(), 2);
    assert_eq!(
        authorizes[1].query_param("code_challenge_method"),
        Some("S256")
    );
    let exchanges = fake.requests_to(Endpoint::CodeExchange);
    assert_eq!(exchanges.len(), 1);
    let r = &exchanges[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/oauth/access_token")
    );
    assert_eq!(r.form_field("code"), Some(code.as_str()));
    assert_eq!(
        r.form_field("code_verifier"),
        Some("ignored-because-instagram-documents-no-pkce")
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert!(r.body.contains("grant_type=authorization_code"));
    assert_eq!(fake.requests().len(), 3);
    fake.clear_requests();
    assert!(fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_exchange_also_accepts_multipart_as_curl_f_sends() {
    let fake = fake().await;
    let code = authorize(&fake, "s");
    let config = FakeMetaConfig::default();
    let fields = [
        ("client_id", config.client_id.as_str()),
        ("client_secret", config.client_secret.as_str()),
        ("grant_type", "authorization_code"),
        ("redirect_uri", REDIRECT),
        ("code", code.as_str()),
    ];
    let mut body = String::new();
    for (k, v) in fields {
        body.push_str(&format!(
            "--BOUNDARY\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str("--BOUNDARY--\r\n");
    let a = answer(
        agent(Duration::from_secs(5))
            .post(format!("{}/oauth/access_token", fake.base_url()))
            .header("Content-Type", "multipart/form-data; boundary=BOUNDARY")
            .send(body),
    );
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_missing_and_expired_tokens_are_190_with_www_authenticate() {
    let fake = fake().await;
    let me = format!("{}/v25.0/me?fields=user_id", fake.base_url());
    let bad = get(&format!("{me}&access_token=IGAAnope"));
    assert!(bad.graph_error(400, 190)["error_subcode"].is_null());
    let www = bad.header("www-authenticate").expect("WWW-Authenticate");
    assert!(
        www.starts_with(r#"OAuth "Facebook Platform" "invalid_token" ""#),
        "{www}"
    );
    let missing = get(&me);
    missing.graph_error(400, 190);
    assert!(
        missing
            .header("www-authenticate")
            .is_some_and(|h| h.contains("invalid_request"))
    );

    let long = connect(&fake);
    fake.expire_token(&long);
    let expired = get(&format!("{me}&access_token={long}"));
    assert_eq!(expired.graph_error(400, 190)["error_subcode"], 463);
    let refresh = get(&format!(
        "{}/refresh_access_token?grant_type=ig_refresh_token&access_token={long}",
        fake.base_url()
    ));
    refresh.graph_error(400, 190);
    let wrong_secret = get(&format!(
        "{}/access_token?grant_type=ig_exchange_token&client_secret=nope&access_token={long}",
        fake.base_url()
    ));
    wrong_secret.graph_error(400, 190);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_issues_a_new_long_lived_token() {
    let fake = fake().await;
    let long = connect(&fake);
    let a = get(&format!(
        "{}/refresh_access_token?grant_type=ig_refresh_token&access_token={long}",
        fake.base_url()
    ));
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(
        (v["token_type"].as_str(), v["expires_in"].as_u64()),
        (Some("bearer"), Some(5183944))
    );
    let new = v["access_token"].as_str().expect("token");
    assert_ne!(new, long);
    assert_eq!(fake.issued_tokens().last().map(String::as_str), Some(new));
    let unknown = get(&format!(
        "{}/refresh_access_token?grant_type=ig_refresh_token&access_token=IGAAunknown",
        fake.base_url()
    ));
    unknown.graph_error(400, 190);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_api_records_messages_and_limits_text_to_1000_bytes() {
    let fake = fake().await;
    let long = connect(&fake);
    let a = post_json(&send_url(&fake, "me"), &long, &text_body("Olá! 💙"));
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["recipient_id"], "1129842642640637");
    let mid = v["message_id"].as_str().expect("message_id");

    // 250 four-byte emoji are 1000 bytes: allowed; one more is not.
    let ok = post_json(
        &send_url(&fake, "17841400538867190"),
        &long,
        &text_body(&"💙".repeat(250)),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let long_text = post_json(&send_url(&fake, "me"), &long, &text_body(&"💙".repeat(251)));
    long_text.graph_error(400, 100);

    let image = json!({
        "recipient": { "id": "1129842642640637" },
        "message": { "attachments": [{ "type": "image", "payload": { "url": "https://cdn.example/a.png" } }] },
    });
    assert_eq!(post_json(&send_url(&fake, "me"), &long, &image).status, 200);
    let no_recipient = post_json(
        &send_url(&fake, "me"),
        &long,
        &json!({ "message": { "text": "x" } }),
    );
    no_recipient.graph_error(400, 100);
    let other_account = post_json(
        &send_url(&fake, "17841499999999999"),
        &long,
        &text_body("x"),
    );
    other_account.graph_error(400, 100);

    let sent = fake.sent_messages();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0].account, "17841400538867190");
    assert_eq!(sent[0].message_id, mid);
    assert_eq!(sent[0].text.as_deref(), Some("Olá! 💙"));
    assert_eq!(sent[1].account, "17841400538867190");
    assert_eq!(sent[2].text, None);
    assert_eq!(sent[2].body, image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_answers_with_its_documented_status_envelope_and_headers() {
    let fake = fake().await;
    let long = connect(&fake);
    let send = || post_json(&send_url(&fake, "me"), &long, &text_body("hi"));

    fake.fail_next(Endpoint::Messages, Failure::token_expired());
    let a = send();
    assert_eq!(a.graph_error(400, 190)["error_subcode"], 463);
    assert!(
        a.header("www-authenticate")
            .is_some_and(|h| h.contains("invalid_token"))
    );

    fake.fail_next(Endpoint::Messages, Failure::buc_throttle(7));
    let a = send();
    assert_eq!(a.graph_error(400, 80002)["is_transient"], true);
    let usage: Value = serde_json::from_str(
        a.header("x-business-use-case-usage")
            .expect("BUC usage header"),
    )
    .expect("usage header is JSON");
    assert_eq!(
        usage,
        json!({"17841400538867190":[{"type":"instagram","call_count":100,"total_cputime":12,
            "total_time":15,"estimated_time_to_regain_access":7}]})
    );

    fake.fail_next(Endpoint::Messages, Failure::app_limit());
    fake.fail_next(Endpoint::Messages, Failure::custom_limit());
    fake.fail_next(Endpoint::Messages, Failure::too_many_requests());
    fake.fail_next(Endpoint::Messages, Failure::outside_window());
    fake.fail_next(Endpoint::Messages, Failure::server_error(503));
    send().graph_error(403, 4);
    send().graph_error(403, 613);
    send().graph_error(429, 4);
    let a = send();
    let e = a.graph_error(400, 10);
    assert_eq!(e["error_subcode"], 2534022);
    assert_eq!(
        e["message"],
        "(#10) This message is sent outside of allowed window."
    );
    assert_eq!(send().graph_error(503, 2)["is_transient"], true);

    fake.fail_next(
        Endpoint::CodeExchange,
        Failure::oauth("Invalid platform app"),
    );
    let a = exchange(&fake, "whatever");
    assert_eq!(a.status, 400);
    assert_eq!(
        a.json(),
        json!({"error_type":"OAuthException","code":400,"error_message":"Invalid platform app"})
    );

    fake.fail_next(
        Endpoint::Messages,
        Failure::raw(418, &[("x-custom", "yes")], "not json"),
    );
    let a = send();
    assert_eq!(
        (a.status, a.body.as_str(), a.header("x-custom")),
        (418, "not json", Some("yes"))
    );
    fake.fail_next(
        Endpoint::Messages,
        Failure::graph(400, 100, Some(2534014), "No matching user found"),
    );
    assert_eq!(send().graph_error(400, 100)["error_subcode"], 2534014);

    // Queues drained: back to normal, and failed sends were never "sent".
    assert_eq!(send().status, 200);
    assert_eq!(fake.sent_messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_queue_in_order_and_standing_ones_last_until_cleared() {
    let fake = fake().await;
    let me = format!("{}/v25.0/me?access_token=x", fake.base_url());
    fake.fail_always(Endpoint::Me, Failure::server_error(500));
    fake.fail_next(Endpoint::Me, Failure::app_limit());
    get(&me).graph_error(403, 4);
    get(&me).graph_error(500, 2);
    get(&me).graph_error(500, 2);
    fake.clear_failures();
    // Back to the normal answer for a bad token.
    get(&me).graph_error(400, 190);
    assert_eq!(fake.requests_to(Endpoint::Me).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_answers_late_but_the_work_is_already_done() {
    let fake = fake().await;
    let long = connect(&fake);
    fake.fail_next(
        Endpoint::Messages,
        Failure::hang(Duration::from_millis(400)),
    );
    let timed_out = agent(Duration::from_millis(150))
        .post(send_url(&fake, "me"))
        .header("Authorization", format!("Bearer {long}"))
        .header("Content-Type", "application/json")
        .send(text_body("are you there?").to_string());
    assert!(timed_out.is_err(), "the client should have timed out");
    // Recorded and sent although the client never saw an answer: a retry would duplicate it.
    assert_eq!(fake.requests_to(Endpoint::Messages).len(), 1);
    assert_eq!(fake.sent_messages().len(), 1);

    fake.fail_next(Endpoint::Me, Failure::hang(Duration::from_millis(200)));
    let started = Instant::now();
    let a = get(&format!("{}/v25.0/me?access_token={long}", fake.base_url()));
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_added_to_every_answer() {
    let fake = fake().await;
    fake.set_latency(Duration::from_millis(120));
    let started = Instant::now();
    get(&format!("{}/v25.0/me", fake.base_url())).graph_error(400, 190);
    assert!(started.elapsed() >= Duration::from_millis(120));
    fake.set_latency(Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_account_changes_who_logs_in_next() {
    let fake = fake().await;
    let first = connect(&fake);
    let second_account = FakeAccount {
        user_id: "17841499999999999".to_owned(),
        app_scoped_id: "9007199254740993".to_owned(),
        username: "outraloja".to_owned(),
    };
    fake.set_account(second_account);
    let code = authorize(&fake, "s");
    let a = exchange(&fake, &code);
    assert!(
        a.body.contains(r#""user_id":9007199254740993,"#),
        "{}",
        a.body
    );
    let me = |token: &str| {
        get(&format!(
            "{}/v25.0/me?fields=user_id&access_token={token}",
            fake.base_url()
        ))
        .json()["user_id"]
            .clone()
    };
    assert_eq!(me(&first), "17841400538867190");
    let short = a.json()["access_token"].as_str().expect("token").to_owned();
    assert_eq!(me(&short), "17841499999999999");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_can_be_listed_and_removed() {
    let fake = fake().await;
    let long = connect(&fake);
    let url = format!("{}/v25.0/me/subscribed_apps", fake.base_url());
    let post = |fields: &str| {
        answer(
            agent(Duration::from_secs(5))
                .post(format!(
                    "{url}?subscribed_fields={fields}&access_token={long}"
                ))
                .send_empty(),
        )
    };
    assert_eq!(post("messages,message_reactions").status, 200);
    // The token lacks instagram_business_manage_comments.
    post("comments").graph_error(400, 10);
    post("bogus").graph_error(400, 100);
    let listed = get(&format!("{url}?access_token={long}")).json();
    assert_eq!(
        listed["data"][0]["subscribed_fields"],
        json!(["messages", "message_reactions"])
    );
    let deleted = answer(
        agent(Duration::from_secs(5))
            .delete(format!("{url}?access_token={long}"))
            .call(),
    );
    assert_eq!(deleted.body, r#"{"success":true}"#);
    assert_eq!(fake.subscribed_fields("17841400538867190"), None);
    let recorded = fake.requests_to(Endpoint::SubscribedApps);
    assert_eq!(
        recorded[0].query_param("subscribed_fields"),
        Some("messages,message_reactions")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_recorded_and_get_a_graph_error() {
    let fake = fake().await;
    get(&format!("{}/v25.0/me/conversations", fake.base_url())).graph_error(400, 2500);
    assert_eq!(fake.requests_to(Endpoint::Unknown).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_signs_the_exact_body_and_reports_non_2xx_statuses() {
    // The fake's own unknown-path answer stands in for a receiver that says 400.
    let fake = fake().await;
    let url = format!("{}/webhooks/instagram", fake.base_url());
    let (status, body) = webhook::deliver(&url, "test_app_secret", FIXTURE);
    assert_eq!(status, 400, "{body}");
    let r = &fake.requests_to(Endpoint::Unknown)[0];
    assert_eq!(r.body, FIXTURE);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("x-hub-signature-256"),
        Some("sha256=d54d64374bb54b0d60bf5113d0e430540cad72b664dedc6e85406b3dbd0965b9")
    );
    let (status, body) = webhook::deliver("http://127.0.0.1:9/webhooks", "s", "{}");
    assert_eq!(status, 0, "{body}");
}

#[test]
fn the_binary_prints_its_url_serves_and_stops_on_sigterm() {
    let (child, base) = start_announced(
        env!("CARGO_BIN_EXE_fake-meta"),
        "fake-meta",
        &[
            "--client-id",
            "123",
            "--account-user-id",
            "17841411111111111",
        ],
    );
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let a = get(&format!(
        "{base}/oauth/authorize?client_id=123&redirect_uri=https://x.test/cb&response_type=code\
         &scope=instagram_business_basic"
    ));
    assert_eq!(a.status, 302, "{}", a.body);

    assert_eq!(terminate(child), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cards_and_quick_replies_within_meta_s_limits_are_taken_and_any_over_them_refused() {
    let fake = fake().await;
    let long = connect(&fake);
    let send = |message: Value| {
        post_json(
            &send_url(&fake, "me"),
            &long,
            &json!({ "recipient": { "id": "1129842642640637" }, "message": message }),
        )
    };
    let button =
        |i: usize| json!({ "type": "postback", "title": format!("b{i}"), "payload": "WANT:X" });
    let element = |title: String, buttons: usize| {
        json!({
            "title": title,
            "subtitle": "R$ 39,90 · Em estoque",
            "image_url": "https://cdn.example/a.jpg",
            "default_action": { "type": "web_url", "url": "https://loja.example/p" },
            "buttons": (0..buttons).map(button).collect::<Vec<_>>(),
        })
    };
    let cards = |elements: Vec<Value>| json!({ "attachment": { "type": "template", "payload": { "template_type": "generic", "elements": elements } } });
    let quick = |n: usize, title: &str| {
        (0..n)
            .map(|_| json!({ "content_type": "text", "title": title, "payload": "SKU:X" }))
            .collect::<Vec<_>>()
    };
    // At the limits: taken (the worker's own builder's output, and a hand-built maximum).
    let built = igsales_meta::send::OutgoingMessage::cards(vec![
        igsales_meta::send::Element::new(&"C".repeat(200)).subtitle("R$ 1,00"),
    ])
    .with_quick_replies(
        (0..20)
            .filter_map(|_| igsales_meta::send::QuickReply::text(&"q".repeat(50), "SAY"))
            .collect(),
    );
    assert_eq!(
        send(serde_json::to_value(&built).expect("json")).status,
        200
    );
    let mut max = cards((0..10).map(|_| element("é".repeat(80), 3)).collect());
    max["quick_replies"] = Value::Array(quick(13, &"ç".repeat(20)));
    assert_eq!(send(max.clone()).status, 200);
    let mut text = json!({ "text": "oi" });
    text["quick_replies"] = Value::Array(quick(13, "Tem em azul?"));
    assert_eq!(send(text).status, 200);
    // Over any of them: Meta's code 100, nothing sent.
    let over = [
        cards(vec![element("x".repeat(81), 1)]),
        cards((0..11).map(|_| element("t".into(), 1)).collect()),
        cards(vec![element("t".into(), 4)]),
        cards(vec![]),
        {
            let mut m = max.clone();
            m["quick_replies"] = Value::Array(quick(14, "q"));
            m
        },
        {
            let mut m = max.clone();
            m["quick_replies"] = Value::Array(quick(1, &"q".repeat(21)));
            m
        },
        {
            let mut m = cards(vec![element("t".into(), 0)]);
            m["attachment"]["payload"]["elements"][0]["subtitle"] = json!("s".repeat(81));
            m
        },
    ];
    for message in over {
        send(message.clone()).graph_error(400, 100);
    }
    let sent = fake.sent_messages();
    assert_eq!(
        sent.len(),
        3,
        "only the messages within the limits were sent"
    );
    assert_eq!(sent[1].body["message"], max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_breakers_are_kept_per_account_within_meta_s_rules() {
    let fake = fake().await;
    let long = connect(&fake);
    let account = FakeAccount::default().user_id;
    let url = format!("{}/v26.0/{account}/messenger_profile", fake.base_url());
    let cta = |q: &str| json!({ "question": q, "payload": format!("P:{q}") });
    let profile = |ctas: Vec<Value>, platform: &str, locale: &str| {
        json!({
            "platform": platform,
            "ice_breakers": [{ "call_to_actions": ctas, "locale": locale }],
        })
    };
    let four: Vec<Value> = ["a", "b", "c", "d"].into_iter().map(cta).collect();
    let set = post_json(&url, &long, &profile(four.clone(), "instagram", "default"));
    assert_eq!(
        (set.status, set.body.as_str()),
        (200, r#"{"result":"success"}"#)
    );
    assert_eq!(fake.ice_breakers(&account).len(), 4);
    assert_eq!(
        fake.ice_breakers(&account)[0],
        ("a".to_owned(), "P:a".to_owned())
    );

    // Meta's rules, each refused with code 100 and nothing changed.
    let mut five = four.clone();
    five.push(cta("e"));
    post_json(&url, &long, &profile(five, "instagram", "default")).graph_error(400, 100);
    post_json(&url, &long, &profile(four.clone(), "messenger", "default")).graph_error(400, 100);
    post_json(&url, &long, &profile(four.clone(), "instagram", "pt_BR")).graph_error(400, 100);
    post_json(
        &url,
        &long,
        &profile(vec![cta(&"x".repeat(81))], "instagram", "default"),
    )
    .graph_error(400, 100);
    // Another account's node, or no token: refused as other Graph calls are.
    let other = format!(
        "{}/v26.0/17841400000000999/messenger_profile",
        fake.base_url()
    );
    post_json(
        &other,
        &long,
        &profile(four.clone(), "instagram", "default"),
    )
    .graph_error(400, 100);
    post_json(&url, "", &profile(four, "instagram", "default")).graph_error(400, 190);
    assert_eq!(fake.ice_breakers(&account).len(), 4);

    let listed = get(&format!(
        "{url}?fields=ice_breakers&platform=instagram&access_token={long}"
    ))
    .json();
    assert_eq!(listed["data"][0]["locale"], "default");
    assert_eq!(listed["data"][0]["call_to_actions"][3]["question"], "d");
    get(&format!("{url}?fields=ice_breakers&access_token={long}")).graph_error(400, 100);

    let deleted = answer(
        agent(Duration::from_secs(5))
            .delete(&url)
            .header("Authorization", format!("Bearer {long}"))
            .header("Content-Type", "application/json")
            .force_send_body()
            .send(json!({ "fields": ["ice_breakers"], "platform": "instagram" }).to_string()),
    );
    assert_eq!(deleted.body, r#"{"result":"success"}"#);
    assert!(fake.ice_breakers(&account).is_empty());
    let listed = get(&format!(
        "{url}?fields=ice_breakers&platform=instagram&access_token={long}"
    ))
    .json();
    assert_eq!(listed["data"], json!([]));
}
