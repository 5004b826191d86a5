//! The fake LLM itself, over real HTTP: it must answer as an OpenAI-compatible API does (shape,
//! error envelopes, rate-limit headers), or the service's tests prove nothing.
//!
//! Test bodies call blocking ureq directly: on the multi-thread runtime the test body runs on
//! its own thread and the fake is served by the workers.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use igsales_tests::fake_llm::{FakeLlm, FakeLlmConfig, HANDOFF_MARKER, LlmFailure};
use igsales_tests::http::{Answer, agent, answer};
use igsales_tests::process::{start_announced, terminate};
use serde_json::{Value, json};

const KEY: &str = "test-llm-key";
const CATALOG: &str = "You are the shop's sales assistant. Products:\n\
                       - Camiseta Azul (SKU CAM-AZ): 89.90 BRL, stock 3\n\
                       - Caneca Preta (SKU CAN-PR): 35.00 BRL, stock 12";

/// What OpenAI's API answers, read off an answer.
trait Completion {
    fn content(&self) -> String;
    fn error(&self, status: u16, kind: &str) -> Value;
}

impl Completion for Answer {
    /// The assistant's text of a 200.
    #[track_caller]
    fn content(&self) -> String {
        assert_eq!(self.status, 200, "{}", self.body);
        self.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("no content: {}", self.body))
            .to_owned()
    }

    /// The `error` object of OpenAI's envelope, after checking the status and its four keys.
    #[track_caller]
    fn error(&self, status: u16, kind: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        let error = self.json()["error"].clone();
        assert_eq!(error["type"], kind, "{}", self.body);
        assert!(error["message"].is_string(), "{}", self.body);
        let keys: Vec<&String> = error.as_object().expect("an object").keys().collect();
        assert_eq!(keys.len(), 4, "{}", self.body);
        error
    }
}

fn send(
    url: &str,
    authorization: Option<&str>,
    body: &str,
    timeout: Duration,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let mut req = agent(timeout)
        .post(url)
        .header("Content-Type", "application/json");
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    req.send(body)
}

fn post_raw(fake: &FakeLlm, authorization: Option<&str>, body: &str) -> Answer {
    let url = format!("{}/chat/completions", fake.base_url());
    answer(send(&url, authorization, body, Duration::from_secs(5)))
}

fn chat_body(customer: &str) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": CATALOG},
            {"role": "user", "content": customer},
        ],
        "temperature": 0.3,
    })
}

fn chat(fake: &FakeLlm, customer: &str) -> Answer {
    post_raw(
        fake,
        Some(&format!("Bearer {KEY}")),
        &chat_body(customer).to_string(),
    )
}

async fn fake() -> FakeLlm {
    FakeLlm::start(FakeLlmConfig::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_has_every_field_of_openais_shape_and_is_recorded() {
    let fake = fake().await;
    let mut body = chat_body("hello");
    body["max_tokens"] = json!(300);
    let a = post_raw(&fake, Some(&format!("Bearer {KEY}")), &body.to_string());
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.header("content-type")
            .is_some_and(|v| v.starts_with("application/json"))
    );
    assert!(
        a.header("x-request-id")
            .is_some_and(|v| v.starts_with("req_"))
    );
    let v = a.json();
    assert!(
        v["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-")),
        "{v}"
    );
    assert_eq!(v["object"], "chat.completion");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let created = v["created"].as_u64().expect("created is a unix time");
    assert!(now.abs_diff(created) <= 5, "{created} vs {now}");
    assert_eq!(v["model"], "gpt-4o-mini");
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[0]["message"]["role"], "assistant");
    assert!(choices[0]["message"]["content"].is_string());
    assert_eq!(choices[0]["finish_reason"], "stop");
    let usage = &v["usage"];
    let prompt = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
    let completion = usage["completion_tokens"]
        .as_u64()
        .expect("completion_tokens");
    assert!(prompt > 0 && completion > 0, "{usage}");
    assert_eq!(usage["total_tokens"], prompt + completion);

    let recorded = fake.requests();
    assert_eq!(recorded.len(), 1);
    let r = &recorded[0];
    assert_eq!(r.model, "gpt-4o-mini");
    assert_eq!(r.messages[0], ("system".to_owned(), CATALOG.to_owned()));
    assert_eq!(r.last("user"), Some("hello"));
    assert_eq!(r.max_tokens, Some(300));
    assert_eq!(r.authorization.as_deref(), Some("Bearer test-llm-key"));
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_completion_paths_are_served_and_others_get_a_404_envelope() {
    let fake = fake().await;
    let root = fake.base_url().replace("/v1", "");
    let body = chat_body("hi").to_string();
    let auth = format!("Bearer {KEY}");
    for url in [
        format!("{root}/v1/chat/completions"),
        format!("{root}/chat/completions"),
    ] {
        let a = answer(send(&url, Some(&auth), &body, Duration::from_secs(5)));
        assert_eq!(a.status, 200, "{url}: {}", a.body);
    }
    let a = answer(send(
        &format!("{root}/v1/v1/chat/completions"),
        Some(&auth),
        &body,
        Duration::from_secs(5),
    ));
    let error = a.error(404, "invalid_request_error");
    assert_eq!(
        error["message"],
        "Invalid URL (POST /v1/v1/chat/completions)"
    );
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_key_gets_401_and_is_still_recorded() {
    let fake = fake().await;
    let body = chat_body("hi").to_string();
    let a = post_raw(&fake, Some("Bearer sk-wrong-key-0123456789"), &body);
    let error = a.error(401, "invalid_request_error");
    assert_eq!(error["code"], "invalid_api_key");
    assert_eq!(error["param"], Value::Null);
    let message = error["message"].as_str().expect("message");
    assert!(
        message.starts_with("Incorrect API key provided: "),
        "{message}"
    );
    assert!(!message.contains("sk-wrong-key-0123456789"), "{message}");

    let a = post_raw(&fake, None, &body);
    let error = a.error(401, "invalid_request_error");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("didn't provide an API key"))
    );

    let recorded = fake.requests();
    assert_eq!(recorded.len(), 2);
    assert_eq!(
        recorded[0].authorization.as_deref(),
        Some("Bearer sk-wrong-key-0123456789")
    );
    assert_eq!(recorded[1].authorization, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_or_missing_messages_get_400() {
    let fake = fake().await;
    let auth = format!("Bearer {KEY}");
    let a = post_raw(&fake, Some(&auth), "{\"model\": \"m\", ");
    let error = a.error(400, "invalid_request_error");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not parse the JSON"))
    );

    let a = post_raw(&fake, Some(&auth), r#"{"model":"m"}"#);
    let error = a.error(400, "invalid_request_error");
    assert_eq!(error["param"], "messages");
    assert_eq!(error["code"], "missing_required_parameter");

    let a = post_raw(&fake, Some(&auth), r#"{"model":"m","messages":[]}"#);
    assert_eq!(a.error(400, "invalid_request_error")["code"], "empty_array");

    // The key is checked before the body, as OpenAI does.
    assert_eq!(post_raw(&fake, Some("Bearer nope"), "{").status, 401);
    assert_eq!(fake.requests()[1].model, "m");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_replies_come_first_in_order_then_the_standing_one_then_the_responder() {
    let fake = fake().await;
    fake.reply_next("first");
    fake.reply_next("second");
    fake.set_reply(Some("always".to_owned()));
    assert_eq!(chat(&fake, "hi").content(), "first");
    assert_eq!(chat(&fake, "hi").content(), "second");
    assert_eq!(chat(&fake, "hi").content(), "always");
    assert_eq!(chat(&fake, "hi").content(), "always");
    fake.set_reply(None);
    assert!(
        chat(&fake, "hi")
            .content()
            .contains("Camiseta Azul (89.90 BRL)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responder_names_the_product_asked_about_with_its_price_and_stock() {
    let fake = fake().await;
    let reply = chat(&fake, "Oi! Quanto custa a caneca preta?").content();
    assert!(reply.contains("Caneca Preta"), "{reply}");
    assert!(reply.contains("35.00 BRL"), "{reply}");
    assert!(reply.contains("12 in stock"), "{reply}");
    assert!(!reply.contains("Camiseta"), "{reply}");

    let reply = chat(&fake, "Tem camisetas azuis?").content();
    assert!(reply.contains("Camiseta Azul costs 89.90 BRL"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_an_attendant_answers_exactly_the_handoff_marker() {
    let fake = fake().await;
    assert_eq!(
        chat(&fake, "quero falar com um atendente").content(),
        HANDOFF_MARKER
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiting_is_a_429_with_retry_after_and_ratelimit_headers() {
    let fake = fake().await;
    fake.reply_next("after the retry");
    fake.fail_next(LlmFailure::RateLimited {
        retry_after_secs: 7,
    });
    let a = chat(&fake, "hi");
    let error = a.error(429, "requests");
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("gpt-4o-mini"))
    );
    assert_eq!(a.header("retry-after"), Some("7"));
    assert_eq!(a.header("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(a.header("x-ratelimit-reset-requests"), Some("7s"));
    assert!(a.header("x-ratelimit-limit-requests").is_some());
    // One failure, once; the queued reply was not used up by it.
    assert_eq!(chat(&fake, "hi").content(), "after the retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_context_length_use_openais_envelopes() {
    let fake = fake().await;
    for status in [500, 503] {
        fake.fail_next(LlmFailure::ServerError(status));
        let error = chat(&fake, "hi").error(status, "server_error");
        let message = error["message"].as_str().expect("message");
        assert!(
            message.starts_with("The server had an error while processing your request"),
            "{message}"
        );
    }
    fake.fail_next(LlmFailure::ContextLength);
    let error = chat(&fake, "hi").error(400, "invalid_request_error");
    assert_eq!(error["code"], "context_length_exceeded");
    assert_eq!(error["param"], "messages");
    assert_eq!(chat(&fake, "hi").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_always_lasts_until_cleared_and_raw_is_sent_verbatim() {
    let fake = fake().await;
    fake.fail_always(LlmFailure::ServerError(503));
    fake.fail_next(LlmFailure::raw(
        418,
        &[("x-custom", "yes"), ("content-type", "text/plain")],
        "teapot",
    ));
    let a = chat(&fake, "hi");
    assert_eq!((a.status, a.body.as_str()), (418, "teapot"));
    assert_eq!(a.header("x-custom"), Some("yes"));
    assert_eq!(a.header("x-request-id"), None);
    assert_eq!(chat(&fake, "hi").status, 503);
    assert_eq!(chat(&fake, "hi").status, 503);
    fake.clear_failures();
    assert_eq!(chat(&fake, "hi").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_outlasts_a_short_client_timeout_then_answers_normally() {
    let fake = fake().await;
    let url = format!("{}/chat/completions", fake.base_url());
    let auth = format!("Bearer {KEY}");
    let body = chat_body("hi").to_string();
    fake.fail_next(LlmFailure::Hang(Duration::from_millis(400)));
    let timed_out = send(&url, Some(&auth), &body, Duration::from_millis(100));
    assert!(timed_out.is_err(), "the client should time out");

    fake.fail_next(LlmFailure::Hang(Duration::from_millis(200)));
    fake.reply_next("late but fine");
    let started = Instant::now();
    let a = answer(send(&url, Some(&auth), &body, Duration::from_secs(5)));
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(a.content(), "late but fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_applies_to_concurrent_requests_side_by_side() {
    const N: usize = 50;
    let latency = Duration::from_millis(500);
    let fake = fake().await;
    fake.set_latency(latency);
    let url = format!("{}/chat/completions", fake.base_url());
    let body = chat_body("hi").to_string();
    let barrier = Arc::new(Barrier::new(N + 1));
    let threads: Vec<_> = (0..N)
        .map(|_| {
            let (url, body, barrier) = (url.clone(), body.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let auth = format!("Bearer {KEY}");
                answer(send(&url, Some(&auth), &body, Duration::from_secs(10))).status
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for t in threads {
        assert_eq!(t.join().expect("request thread"), 200);
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= latency, "{elapsed:?}");
    // In turn it would take 25 s; side by side it is one latency plus overhead.
    assert!(elapsed < latency * 3, "{elapsed:?}");
    assert_eq!(fake.request_count(), N as u64);
    assert!(fake.max_in_flight() >= 40, "{}", fake.max_in_flight());
    fake.clear_requests();
    assert!(fake.requests().is_empty());
    assert_eq!(fake.request_count(), N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_truncates_on_a_char_boundary_with_finish_reason_length() {
    let fake = fake().await;
    let mut body = chat_body("hi");
    body["max_tokens"] = json!(2);
    let auth = format!("Bearer {KEY}");
    // 8 bytes allowed; the 'é' at bytes 7..9 does not fit whole.
    fake.reply_next("abcdefgé and more");
    let v = post_raw(&fake, Some(&auth), &body.to_string()).json();
    assert_eq!(v["choices"][0]["message"]["content"], "abcdefg");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 2);

    fake.reply_next("short");
    body["max_tokens"] = json!(100);
    let v = post_raw(&fake, Some(&auth), &body.to_string()).json();
    assert_eq!(v["choices"][0]["message"]["content"], "short");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[test]
fn the_binary_prints_its_url_serves_and_stops_on_sigterm() {
    let (child, base) = start_announced(
        env!("CARGO_BIN_EXE_fake-llm"),
        "fake-llm",
        &["--api-key", "sandbox-key", "--latency-ms", "10"],
    );
    assert!(
        base.starts_with("http://127.0.0.1:") && base.ends_with("/v1"),
        "{base}"
    );
    let a = answer(send(
        &format!("{base}/chat/completions"),
        Some("Bearer sandbox-key"),
        &chat_body("quanto custa a camiseta?").to_string(),
        Duration::from_secs(5),
    ));
    assert!(a.content().contains("89.90 BRL"), "{}", a.body);

    assert_eq!(terminate(child), Some(0));
}

fn structured_body(customer: &str) -> Value {
    let mut body = chat_body(customer);
    body["response_format"] = json!({
        "type": "json_schema",
        "json_schema": {"name": "shop_reply", "strict": true, "schema": {"type": "object"}},
    });
    body
}

fn structured(fake: &FakeLlm, customer: &str) -> Answer {
    post_raw(
        fake,
        Some(&format!("Bearer {KEY}")),
        &structured_body(customer).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn asked_for_the_structure_it_chooses_the_product_and_suggests_the_others() {
    use igsales_tests::fake_llm::{Misbehave, UNKNOWN_SKU};
    let fake = fake().await;
    let a: Value = serde_json::from_str(&structured(&fake, "tem camiseta azul?").content())
        .expect("the structure");
    assert_eq!(
        a["text"],
        "Good news! Camiseta Azul costs 89.90 BRL and we have 3 in stock. Would you like to order it?"
    );
    assert_eq!(a["skus"], json!(["CAM-AZ"]));
    assert_eq!(
        a["quick_replies"],
        json!([{"title": "Caneca Preta", "sku": "CAN-PR"}])
    );
    assert_eq!(a["handoff"], false);
    assert!(fake.requests()[0].response_format.is_some());
    let h: Value = serde_json::from_str(&structured(&fake, "quero um atendente").content())
        .expect("the structure");
    assert_eq!(h["handoff"], true);
    // Plain requests keep plain answers.
    assert!(
        chat(&fake, "tem camiseta azul?")
            .content()
            .starts_with("Good news!")
    );

    // On request: broken, lying, one answer each, in order.
    for how in [
        Misbehave::BrokenJson,
        Misbehave::InventPrice,
        Misbehave::OtherPrice,
        Misbehave::UnknownSku,
    ] {
        fake.misbehave_next(how);
    }
    let broken = structured(&fake, "tem camiseta azul?").content();
    assert!(serde_json::from_str::<Value>(&broken).is_err(), "{broken}");
    let invented: Value =
        serde_json::from_str(&structured(&fake, "tem camiseta azul?").content()).expect("json");
    assert!(
        invented["text"]
            .as_str()
            .expect("text")
            .contains("96.90 BRL")
    );
    let other: Value =
        serde_json::from_str(&structured(&fake, "tem camiseta azul?").content()).expect("json");
    assert!(
        other["text"]
            .as_str()
            .expect("text")
            .contains("Camiseta Azul costs 35.00 BRL")
    );
    let unknown: Value =
        serde_json::from_str(&structured(&fake, "tem camiseta azul?").content()).expect("json");
    assert_eq!(unknown["skus"], json!(["CAM-AZ", UNKNOWN_SKU]));
    let honest: Value =
        serde_json::from_str(&structured(&fake, "tem camiseta azul?").content()).expect("json");
    assert_eq!(honest, a);

    // A tap note makes the tapped product what the customer means.
    let mut tap = structured_body("Quero este");
    tap["messages"][0]["content"] = json!(format!(
        "{CATALOG}\n\nThe customer tapped \"Quero este\" about this product:\n- Caneca Preta (SKU CAN-PR): 35.00 BRL, stock 12"
    ));
    let tapped: Value = serde_json::from_str(
        &post_raw(&fake, Some(&format!("Bearer {KEY}")), &tap.to_string()).content(),
    )
    .expect("json");
    assert_eq!(tapped["skus"], json!(["CAN-PR"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn refusing_the_structure_is_a_400_naming_response_format_as_older_servers_answer() {
    let fake = fake().await;
    fake.refuse_structured(true);
    let error = structured(&fake, "tem camiseta azul?").error(400, "invalid_request_error");
    assert_eq!(error["param"], "response_format");
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("json_schema")
    );
    // The same conversation in plain text is answered.
    assert!(
        chat(&fake, "tem camiseta azul?")
            .content()
            .contains("Camiseta Azul")
    );
    fake.refuse_structured(false);
    assert_eq!(structured(&fake, "tem camiseta azul?").status, 200);
}
