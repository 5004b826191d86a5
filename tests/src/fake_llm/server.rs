//! The HTTP side: records every chat-completions request, applies scripted failures and latency,
//! checks the key and the body, and answers with OpenAI's `chat.completion` shape.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use serde_json::Value;

use super::failure::{OpenAiError, Reply, json};
use super::{LlmFailure, LlmRequest, Shared, State, responder};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(completions))
        // For clients that append the path to a base URL already ending in /v1 without the
        // version, and for base URLs configured without it.
        .route("/chat/completions", post(completions))
        .route("/v1/embeddings", post(super::embeddings::embeddings))
        .route("/embeddings", post(super::embeddings::embeddings))
        .fallback(not_found)
        .with_state(shared)
}

/// Counts a request as in flight until its answer is ready, even if the client goes away.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(&shared.in_flight)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn completions(
    AxumState(shared): AxumState<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = InFlight::enter(&shared);
    shared.request_count.fetch_add(1, Ordering::Relaxed);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let (chat, invalid) = parse(&body);
    let (delay, reply, raw) = {
        let mut state = shared.state();
        state.requests.push(LlmRequest {
            model: chat.model.clone(),
            messages: chat.messages.clone(),
            max_tokens: chat.max_tokens,
            authorization: authorization.clone(),
            response_format: chat.response_format.clone(),
            images: chat.images.clone(),
            at: Instant::now(),
        });
        let failure = state.take_failure();
        let hang = match failure {
            Some(LlmFailure::Hang(d)) => d,
            _ => Duration::ZERO,
        };
        let scripted = failure
            .as_ref()
            .and_then(|f| f.reply(&chat.model, prompt_tokens(&chat)));
        let raw = matches!(failure, Some(LlmFailure::Raw { .. }));
        let reply = scripted.unwrap_or_else(|| {
            answer(
                &shared.api_key,
                &mut state,
                authorization.as_deref(),
                &chat,
                invalid,
            )
        });
        (state.latency + hang, reply, raw)
    };
    // Sleeping outside the lock: concurrent requests wait side by side, not in turn.
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let reply = if raw { reply } else { with_request_id(reply) };
    reply.into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let message = format!("Invalid URL ({method} {})", uri.path());
    with_request_id(OpenAiError::new(404, message, "invalid_request_error").reply()).into_response()
}

fn with_request_id(reply: Reply) -> Reply {
    reply.header(
        "x-request-id",
        format!("req_{}", uuid::Uuid::new_v4().simple()),
    )
}

/// What the request body said, as far as it could be read.
#[derive(Default)]
struct Chat {
    model: String,
    messages: Vec<(String, String)>,
    max_tokens: Option<u32>,
    response_format: Option<Value>,
    images: Vec<String>,
}

impl Chat {
    fn structured(&self) -> bool {
        self.response_format
            .as_ref()
            .and_then(|f| f.get("type"))
            .and_then(Value::as_str)
            == Some("json_schema")
    }
}

/// Reads the body leniently for the record; the error is what OpenAI would answer (400).
fn parse(body: &[u8]) -> (Chat, Option<OpenAiError>) {
    let mut chat = Chat::default();
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return (
            chat,
            Some(OpenAiError::invalid(
                "We could not parse the JSON body of your request. (HINT: This likely means \
                 you aren't using your HTTP library correctly. The OpenAI API expects a JSON \
                 payload, but what was sent was not valid JSON.)",
            )),
        );
    };
    let mut errors = Vec::new();
    match fields.get("model").and_then(Value::as_str) {
        Some(model) => chat.model = model.to_owned(),
        None => errors.push(OpenAiError::invalid("you must provide a model parameter")),
    }
    match fields.get("messages") {
        None | Some(Value::Null) => errors.push(
            OpenAiError::invalid("Missing required parameter: 'messages'.")
                .param("messages")
                .code("missing_required_parameter"),
        ),
        Some(Value::Array(messages)) if messages.is_empty() => errors.push(
            OpenAiError::invalid(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but \
                 got an empty array instead.",
            )
            .param("messages")
            .code("empty_array"),
        ),
        Some(Value::Array(messages)) => {
            for (i, m) in messages.iter().enumerate() {
                match m.get("role").and_then(Value::as_str) {
                    Some(role) => {
                        chat.messages.push((role.to_owned(), content(m)));
                        match images(m) {
                            Ok(urls) => chat.images.extend(urls),
                            Err(part) => errors.push(
                                OpenAiError::invalid(format!(
                                    "Invalid 'messages[{i}].content[{part}].image_url': expected an object with a 'url' string."
                                ))
                                .param(format!("messages[{i}].content[{part}].image_url"))
                                .code("invalid_type"),
                            ),
                        }
                    }
                    None => errors.push(
                        OpenAiError::invalid(format!(
                            "Missing required parameter: 'messages[{i}].role'."
                        ))
                        .param(format!("messages[{i}].role"))
                        .code("missing_required_parameter"),
                    ),
                }
            }
        }
        Some(_) => errors.push(
            OpenAiError::invalid("Invalid type for 'messages': expected an array of objects.")
                .param("messages")
                .code("invalid_type"),
        ),
    }
    // Newer clients send `max_completion_tokens`; it wins, as on OpenAI.
    for name in ["max_tokens", "max_completion_tokens"] {
        match fields.get(name) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if n >= 1 => chat.max_tokens = Some(n),
                _ => errors.push(
                    OpenAiError::invalid(format!(
                        "Invalid '{name}': expected an integer >= 1, but got {v} instead."
                    ))
                    .param(name)
                    .code("invalid_value"),
                ),
            },
        }
    }
    chat.response_format = fields.get("response_format").cloned();
    // A streaming client would hang on a JSON answer; make the mistake loud instead.
    if fields.get("stream").and_then(Value::as_bool) == Some(true) {
        errors.push(
            OpenAiError::invalid("fake-llm does not stream: omit 'stream' or set it to false.")
                .param("stream")
                .code("unsupported_value"),
        );
    }
    let first = errors.into_iter().next();
    (chat, first)
}

/// A message's text: a string, or the text parts of an array of content parts.
fn content(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The URLs of a message's `image_url` parts; `Err(index)` for a part without a URL string.
fn images(message: &Value) -> Result<Vec<String>, usize> {
    let Some(Value::Array(parts)) = message.get("content") else {
        return Ok(Vec::new());
    };
    let mut urls = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if p.get("type").and_then(Value::as_str) != Some("image_url") {
            continue;
        }
        match p.pointer("/image_url/url").and_then(Value::as_str) {
            Some(url) => urls.push(url.to_owned()),
            None => return Err(i),
        }
    }
    Ok(urls)
}

/// Rough, as the brief allows: four bytes a token.
fn tokens(text: &str) -> u64 {
    text.len().div_ceil(4) as u64
}

fn prompt_tokens(chat: &Chat) -> u64 {
    chat.messages.iter().map(|(_, c)| tokens(c)).sum()
}

/// The normal answer: key first (as OpenAI checks it before the body), then the body, then the
/// reply (queued, standing, or the catalog responder's).
fn answer(
    api_key: &str,
    state: &mut State,
    authorization: Option<&str>,
    chat: &Chat,
    invalid: Option<OpenAiError>,
) -> Reply {
    if let Some(e) = check_key(api_key, authorization) {
        return e.reply();
    }
    if let Some(e) = invalid {
        return e.reply();
    }
    if chat.structured() && state.refuse_structured {
        return OpenAiError::invalid(
            "Invalid parameter: 'response_format' of type 'json_schema' is not supported with \
             this model.",
        )
        .param("response_format")
        .reply();
    }
    let scripted = state
        .queued_replies
        .pop_front()
        .or_else(|| state.standing_reply.clone());
    let mut content = match scripted {
        Some(content) => content,
        None if chat.structured() => {
            let (products, customer) = responder::read(&chat.messages);
            let how = state.misbehaving.pop_front();
            responder::structured(&products, &customer, how, !state.no_cards)
        }
        None => responder::respond(&chat.messages),
    };
    let mut finish_reason = "stop";
    if let Some(max) = chat.max_tokens {
        let limit = usize::try_from(max).unwrap_or(usize::MAX).saturating_mul(4);
        if content.len() > limit {
            content.truncate(content.floor_char_boundary(limit));
            finish_reason = "length";
        }
    }
    completion(chat, content, finish_reason)
}

pub(crate) fn check_key(api_key: &str, authorization: Option<&str>) -> Option<OpenAiError> {
    let Some(value) = authorization.map(str::trim).filter(|v| !v.is_empty()) else {
        return Some(OpenAiError::new(
            401,
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You \
             can obtain an API key from https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
        ));
    };
    let key = match value.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => key.trim(),
        _ => value,
    };
    if key == api_key {
        return None;
    }
    Some(
        OpenAiError::new(
            401,
            format!(
                "Incorrect API key provided: {}. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                mask(key)
            ),
            "invalid_request_error",
        )
        .code("invalid_api_key"),
    )
}

/// OpenAI shows only the ends of a wrong key.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

#[derive(Serialize)]
struct Completion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice; 1],
    usage: Usage,
    system_fingerprint: &'static str,
}

#[derive(Serialize)]
struct Choice {
    index: u32,
    message: Message,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message {
    role: &'static str,
    content: String,
    refusal: Option<()>,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

fn completion(chat: &Chat, content: String, finish_reason: &'static str) -> Reply {
    let prompt_tokens = prompt_tokens(chat);
    let completion_tokens = tokens(&content);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json(
        200,
        &Completion {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            object: "chat.completion",
            created,
            model: &chat.model,
            choices: [Choice {
                index: 0,
                message: Message {
                    role: "assistant",
                    content,
                    refusal: None,
                },
                logprobs: None,
                finish_reason,
            }],
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            },
            system_fingerprint: "fp_fakellm",
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_keys_are_masked_to_their_ends() {
        assert_eq!(mask("sk-abcdefghijklmnop"), "sk-************mnop");
        assert_eq!(mask("short"), "*****");
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],
                        "max_tokens":50,"max_completion_tokens":7}"#;
        let (chat, error) = parse(body);
        assert!(error.is_none());
        assert_eq!(chat.max_tokens, Some(7));
    }

    #[test]
    fn content_parts_are_joined() {
        let body = br#"{"model":"m","messages":[{"role":"user",
            "content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#;
        let (chat, _) = parse(body);
        assert_eq!(chat.messages, vec![("user".to_owned(), "a\nb".to_owned())]);
    }

    #[test]
    fn image_parts_are_recorded_and_a_malformed_one_is_refused() {
        let body = br#"{"model":"m","messages":[{"role":"user",
            "content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"https://cdn/i"}}]}]}"#;
        let (chat, err) = parse(body);
        assert!(err.is_none());
        assert_eq!(chat.images, vec!["https://cdn/i".to_owned()]);
        let body = br#"{"model":"m","messages":[{"role":"user",
            "content":[{"type":"image_url","image_url":"https://cdn/i"}]}]}"#;
        let (_, err) = parse(body);
        assert!(err.is_some());
    }
}
