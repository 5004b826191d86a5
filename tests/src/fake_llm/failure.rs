//! Scripted failures and OpenAI's error envelope
//! `{"error":{"message","type","param","code"}}` they are made of.

use std::time::Duration;

use serde::Serialize;

/// An answer to force instead of the normal one (see
/// [`FakeLlm::fail_next`](super::FakeLlm::fail_next)).
#[derive(Clone, Debug)]
pub enum LlmFailure {
    /// 429, `type: "requests"`, `code: "rate_limit_exceeded"`, with `retry-after` (seconds),
    /// `retry-after-ms` and `x-ratelimit-*` headers saying requests are exhausted.
    RateLimited { retry_after_secs: u64 },
    /// This status (500, 503, …) with a `server_error` envelope.
    ServerError(u16),
    /// 400, `code: "context_length_exceeded"`.
    ContextLength,
    /// Waits this long (on top of the latency), then answers normally: a client timeout shorter
    /// than this sees no answer.
    Hang(Duration),
    /// Exactly this response.
    Raw {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

impl LlmFailure {
    pub fn raw(status: u16, headers: &[(&str, &str)], body: impl Into<String>) -> Self {
        Self::Raw {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.into(),
        }
    }

    /// The response this failure stands for; `model` and `prompt_tokens` fill the messages.
    /// `None` for [`LlmFailure::Hang`], which answers normally.
    pub(crate) fn reply(&self, model: &str, prompt_tokens: u64) -> Option<Reply> {
        let reply = match self {
            Self::RateLimited { retry_after_secs } => {
                let secs = *retry_after_secs;
                OpenAiError::new(
                    429,
                    format!(
                        "Rate limit reached for {model} in organization org-fakellm on requests \
                         per min (RPM): Limit 500, Used 500, Requested 1. Please try again in \
                         {secs}s. Visit https://platform.openai.com/account/rate-limits to learn \
                         more."
                    ),
                    "requests",
                )
                .code("rate_limit_exceeded")
                .reply()
                .header("retry-after", secs.to_string())
                .header("retry-after-ms", (secs * 1000).to_string())
                .header("x-ratelimit-limit-requests", "500")
                .header("x-ratelimit-remaining-requests", "0")
                .header("x-ratelimit-reset-requests", format!("{secs}s"))
                .header("x-ratelimit-limit-tokens", "200000")
                .header("x-ratelimit-remaining-tokens", "200000")
                .header("x-ratelimit-reset-tokens", "0s")
            }
            Self::ServerError(status) => OpenAiError::new(
                *status,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
            )
            .reply(),
            Self::ContextLength => OpenAiError::new(
                400,
                format!(
                    "This model's maximum context length is {CONTEXT_WINDOW} tokens. However, \
                     your messages resulted in {} tokens. Please reduce the length of the \
                     messages.",
                    prompt_tokens.max(CONTEXT_WINDOW + 1)
                ),
                "invalid_request_error",
            )
            .param("messages")
            .code("context_length_exceeded")
            .reply(),
            Self::Hang(_) => return None,
            Self::Raw {
                status,
                headers,
                body,
            } => Reply {
                status: *status,
                headers: headers.clone(),
                body: body.clone(),
            },
        };
        Some(reply)
    }
}

/// Claimed by the context-length failure.
const CONTEXT_WINDOW: u64 = 128_000;

/// An OpenAI API error; fields serialize in OpenAI's order.
#[derive(Serialize)]
pub(crate) struct OpenAiError {
    #[serde(skip)]
    status: u16,
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl OpenAiError {
    pub(crate) fn new(status: u16, message: impl Into<String>, kind: &'static str) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// A 400 `invalid_request_error`, the answer to any bad request body.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, message, "invalid_request_error")
    }

    pub(crate) fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub(crate) fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub(crate) fn reply(&self) -> Reply {
        #[derive(Serialize)]
        struct Envelope<'a> {
            error: &'a OpenAiError,
        }
        json(self.status, &Envelope { error: self })
    }
}

pub(crate) use crate::served::Reply;

/// A JSON response as OpenAI sends it.
pub(crate) fn json(status: u16, body: &impl Serialize) -> Reply {
    // Plain structs of strings and numbers: serializing them cannot fail.
    let body = serde_json::to_string(body).expect("serialize a fake-llm response");
    Reply::typed(status, "application/json", body)
}
