//! The OpenAI-compatible chat-completions client: ureq on the blocking pool, bounded by a
//! semaphore (slow model calls run side by side, never one after another), with timeouts.

use std::sync::Arc;
use std::time::Duration;

use igsales_config::{HttpUrl, Secret};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::runtime::outcome::JobError;

/// One chat message: text, and for a customer's photos (with `OPENAI_VISION=on`) the image
/// URLs, sent as OpenAI-compatible content parts after the text.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: &'static str,
    pub content: String,
    pub images: Vec<String>,
}

impl ChatMessage {
    pub fn new(role: &'static str, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            images: Vec::new(),
        }
    }
}

impl Serialize for ChatMessage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("role", self.role)?;
        if self.images.is_empty() {
            // Plain text stays a string: every compatible server takes that form.
            m.serialize_entry("content", &self.content)?;
        } else {
            let mut parts = vec![serde_json::json!({"type": "text", "text": self.content})];
            parts.extend(
                self.images
                    .iter()
                    .map(|url| serde_json::json!({"type": "image_url", "image_url": {"url": url}})),
            );
            m.serialize_entry("content", &parts)?;
        }
        m.end()
    }
}

fn base_url(s: &str) -> Result<HttpUrl, String> {
    HttpUrl::parse(s)
}

fn on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(String::new()),
    }
}

igsales_config::group! {
    /// The OpenAI-compatible model API.
    pub mod model {
        OPENAI_API_KEY => api_key: Secret = required, secret("the LLM API key");
        OPENAI_BASE_URL => base_url: HttpUrl = default "https://api.openai.com/v1",
            parsed(HttpUrl::FORM, base_url);
        OPENAI_MODEL => model: String = default "gpt-4o-mini", text("a model name");
        OPENAI_TIMEOUT_MS => timeout: Duration = default "30000", millis(1, 600_000);
        /// Model calls in flight at once (each holds a blocking thread while it waits).
        OPENAI_MAX_CONCURRENCY => max_concurrency: usize = default "256",
            amount("a count", 1, 4096);
        OPENAI_MAX_TOKENS => max_tokens: u32 = default "400", amount("tokens", 16, 4096);
        /// `on`: a customer's photos go to the model as image inputs (the model must take
        /// them); `off`: the prompt only says a photo was sent.
        OPENAI_VISION => vision: bool = default "off", parsed("on or off", on_off);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("the model did not answer in time")]
    Timeout,
    #[error("the model API could not be reached ({0})")]
    Transport(String),
    #[error("the model API answered HTTP {status}")]
    Http {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("unexpected answer from the model API: {0}")]
    Decode(String),
    /// HTTP 400 naming `response_format` / `json_schema`: a server (or model) without
    /// structured output. The caller asks again in plain text.
    #[error("the model API does not take a structured response format")]
    StructureRefused,
}

impl LlmError {
    /// Rate limits, server errors and timeouts are retried like Graph calls; other client
    /// errors are permanent.
    pub fn into_job_error(self) -> JobError {
        match self {
            LlmError::Http {
                status: 429,
                retry_after,
            } => JobError::RetryAfter(retry_after.unwrap_or(Duration::from_secs(1)), self.into()),
            LlmError::Http { status, .. } if status >= 500 => JobError::Retry(self.into()),
            LlmError::Http { .. } | LlmError::StructureRefused => JobError::permanent(self),
            LlmError::Timeout | LlmError::Transport(_) | LlmError::Decode(_) => {
                JobError::Retry(self.into())
            }
        }
    }
}

#[derive(Clone)]
pub struct LlmClient {
    cfg: Arc<model::Settings>,
    agent: ureq::Agent,
    permits: Arc<Semaphore>,
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    max_tokens: u32,
    temperature: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a serde_json::Value>,
}

/// Whether a 400's body is a refusal of the response format (OpenAI-style servers name the
/// parameter: `"param": "response_format"`, or the message names it or `json_schema`).
pub fn refuses_structure(body: &str) -> bool {
    let lower = body.to_ascii_lowercase();
    lower.contains("response_format") || lower.contains("json_schema")
}

#[derive(Deserialize)]
struct Response {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
}

impl LlmClient {
    /// The client of the `model` group; `dns_cache` is `HTTP_DNS_CACHE_SECS`.
    pub fn new(cfg: &model::Settings, dns_cache: Duration) -> Self {
        let agent = igsales_meta::http::agent(&igsales_meta::http::AgentSettings {
            timeout: cfg.timeout,
            connect_timeout: cfg.timeout.min(Duration::from_secs(3)),
            max_connections: cfg.max_concurrency,
            dns_cache_ttl: dns_cache,
            user_agent: None,
        });
        let permits = Arc::new(Semaphore::new(cfg.max_concurrency.max(1)));
        LlmClient {
            cfg: Arc::new(cfg.clone()),
            agent,
            permits,
        }
    }

    /// Whether the model is given customers' photos (`OPENAI_VISION`).
    pub fn vision(&self) -> bool {
        self.cfg.vision
    }

    /// One chat completion; the assistant's text.
    pub async fn complete(&self, messages: Vec<ChatMessage>) -> Result<String, LlmError> {
        self.complete_with(messages, None).await
    }

    /// One chat completion with `response_format` (e.g. a JSON schema); the assistant's text.
    pub async fn complete_with(
        &self,
        messages: Vec<ChatMessage>,
        response_format: Option<serde_json::Value>,
    ) -> Result<String, LlmError> {
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LlmError::Transport("client closed".into()))?;
        let body = serde_json::to_vec(&Request {
            model: &self.cfg.model,
            messages: &messages,
            max_tokens: self.cfg.max_tokens,
            temperature: 0.3,
            response_format: response_format.as_ref(),
        })
        .map_err(|e| LlmError::Decode(e.to_string()))?;
        let structured = response_format.is_some();
        post_json(
            &self.agent,
            &self.cfg,
            "/chat/completions",
            body,
            structured,
            |b| {
                let parsed: Response =
                    b.read_json().map_err(|e| LlmError::Decode(e.to_string()))?;
                parsed
                    .choices
                    .into_iter()
                    .next()
                    .and_then(|c| c.message.content)
                    .ok_or_else(|| LlmError::Decode("no choices[0].message.content".into()))
            },
        )
        .await
    }
}

/// POSTs a JSON `body` to `{OPENAI_BASE_URL}{path}` on the blocking pool and reads a 2xx
/// answer with `read`. Any other status is `LlmError::Http` with its Retry-After, except a
/// 400 refusing the response format when the request was `structured`.
pub(crate) async fn post_json<T: Send + 'static>(
    agent: &ureq::Agent,
    cfg: &Arc<model::Settings>,
    path: &'static str,
    body: Vec<u8>,
    structured: bool,
    read: impl FnOnce(&mut ureq::Body) -> Result<T, LlmError> + Send + 'static,
) -> Result<T, LlmError> {
    let (agent, cfg) = (agent.clone(), cfg.clone());
    tokio::task::spawn_blocking(move || {
        let url = format!("{}{path}", cfg.base_url.base());
        let mut resp = agent
            .post(&url)
            .header("Authorization", &format!("Bearer {}", cfg.api_key.expose()))
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(|e| match e {
                ureq::Error::Timeout(_) => LlmError::Timeout,
                ureq::Error::Io(io) => LlmError::Transport(io.kind().to_string()),
                _ => LlmError::Transport("request failed".into()),
            })?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return read(resp.body_mut());
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|s| Duration::from_secs_f64(s.clamp(0.0, 3600.0)));
        if status == 400 && structured {
            let body = resp
                .body_mut()
                .with_config()
                .limit(64 * 1024)
                .read_to_string()
                .unwrap_or_default();
            if refuses_structure(&body) {
                return Err(LlmError::StructureRefused);
            }
        }
        Err(LlmError::Http {
            status,
            retry_after,
        })
    })
    .await
    .map_err(|_| LlmError::Transport("worker thread failed".into()))?
}
