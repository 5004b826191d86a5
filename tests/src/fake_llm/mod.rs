//! A fake OpenAI-compatible LLM: `POST /v1/chat/completions` over real HTTP on one local host,
//! answering with OpenAI's response shape, error envelopes and rate-limit headers.
//!
//! Tests start it with [`FakeLlm::start`], set the service's `OPENAI_BASE_URL` to
//! [`FakeLlm::base_url`], then script answers ([`FakeLlm::reply_next`], [`FakeLlm::set_reply`]),
//! script trouble ([`FakeLlm::fail_next`]) and inspect what was asked ([`FakeLlm::requests`]).
//!
//! What a request gets, first match wins:
//! 1. a scripted failure ([`FakeLlm::fail_next`] queue, then [`FakeLlm::fail_always`]);
//! 2. a wrong or missing key (401) or an invalid body (400);
//! 3. the next queued reply, then the standing reply;
//! 4. the catalog-aware responder (see [`responder`]): deterministic and offline, it names the
//!    prompt's best-matching product with its price and stock, or answers [`HANDOFF_MARKER`] when
//!    the customer asks for a human. A request with a `json_schema` `response_format` gets the
//!    structured answer instead (SKUs for cards, quick replies), broken or lying when
//!    [`FakeLlm::misbehave_next`] says so; [`FakeLlm::refuse_structured`] makes it answer such a
//!    request as an older server does: HTTP 400 naming `response_format`.
//!
//! Paths served: `/v1/chat/completions` and `/chat/completions`, and `/v1/embeddings` (see
//! [`embeddings`]); anything else gets OpenAI's 404.

pub mod embeddings;
mod failure;
pub mod responder;
mod server;

use crate::served::Served;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub use failure::LlmFailure;
pub use responder::{Misbehave, UNKNOWN_SKU};

/// What the catalog-aware responder answers, alone, when the customer asks for a person.
pub const HANDOFF_MARKER: &str = "[[HANDOFF]]";

#[derive(Clone, Debug)]
pub struct FakeLlmConfig {
    /// The key expected as `Authorization: Bearer <key>`.
    pub api_key: String,
}

impl Default for FakeLlmConfig {
    fn default() -> Self {
        Self {
            api_key: "test-llm-key".to_owned(),
        }
    }
}

/// One chat-completions request as the fake received it, including rejected ones (a body that
/// did not parse leaves `model` empty and `messages` empty).
#[derive(Clone, Debug)]
pub struct LlmRequest {
    pub model: String,
    /// `(role, content)`; content made of parts is their text joined with newlines.
    pub messages: Vec<(String, String)>,
    /// `max_completion_tokens`, or else `max_tokens`.
    pub max_tokens: Option<u32>,
    /// The `Authorization` header as sent.
    pub authorization: Option<String>,
    /// `response_format` as sent.
    pub response_format: Option<serde_json::Value>,
    /// The URLs of `image_url` content parts, in order.
    pub images: Vec<String>,
    pub at: Instant,
}

impl LlmRequest {
    /// The content of the last message with `role`.
    pub fn last(&self, role: &str) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find(|(r, _)| r == role)
            .map(|(_, c)| c.as_str())
    }
}

/// Handle to a running fake; clones share it. The server stops when the last clone drops.
#[derive(Clone)]
pub struct FakeLlm {
    inner: Arc<Served<Shared>>,
}

/// What the server task and the handles share. The counters are atomics so that benchmarks
/// with hundreds of requests in flight do not contend on the state lock to read them.
pub(crate) struct Shared {
    pub(crate) api_key: String,
    pub(crate) request_count: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) max_in_flight: AtomicU64,
    state: Mutex<State>,
}

impl Shared {
    /// Never held across an await, so a poisoned lock only means a test already panicked.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) queued_replies: VecDeque<String>,
    pub(crate) standing_reply: Option<String>,
    pub(crate) queued_failures: VecDeque<LlmFailure>,
    pub(crate) standing_failure: Option<LlmFailure>,
    pub(crate) latency: Duration,
    pub(crate) requests: Vec<LlmRequest>,
    /// Answer structured requests with HTTP 400, as a server without structured output.
    pub(crate) refuse_structured: bool,
    /// How the next structured answers go wrong (one each).
    pub(crate) misbehaving: VecDeque<Misbehave>,
    /// Structured answers choose no SKUs (no cards).
    pub(crate) no_cards: bool,
}

impl State {
    pub(crate) fn take_failure(&mut self) -> Option<LlmFailure> {
        self.queued_failures
            .pop_front()
            .or_else(|| self.standing_failure.clone())
    }
}

impl FakeLlm {
    /// Serves on 127.0.0.1 with an ephemeral port.
    pub async fn start(config: FakeLlmConfig) -> FakeLlm {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config)
            .await
            .expect("bind 127.0.0.1:0 for the fake LLM")
    }

    pub async fn start_on(addr: SocketAddr, config: FakeLlmConfig) -> std::io::Result<FakeLlm> {
        let shared = Arc::new(Shared {
            api_key: config.api_key,
            request_count: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        });
        let app = server::router(shared.clone());
        Ok(FakeLlm {
            inner: Arc::new(Served::start(addr, shared, app, "fake-llm").await?),
        })
    }

    /// `http://127.0.0.1:PORT/v1`: what `OPENAI_BASE_URL` is set to.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.inner.base_url())
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.shared.state()
    }

    /// Queues `text` as the content of the next successful answer (FIFO, one each). A request
    /// answered with a failure or an error does not use it up, so a client's retry gets it.
    pub fn reply_next(&self, text: impl Into<String>) {
        self.state().queued_replies.push_back(text.into());
    }

    /// Answers every successful request with `text` once the queue is empty; `None` goes back to
    /// the catalog-aware responder.
    pub fn set_reply(&self, text: Option<String>) {
        self.state().standing_reply = text;
    }

    /// Queues `failure` as the answer to the next request (FIFO, one each).
    pub fn fail_next(&self, failure: LlmFailure) {
        self.state().queued_failures.push_back(failure);
    }

    /// Answers every request with `failure` (after any queued ones) until cleared.
    pub fn fail_always(&self, failure: LlmFailure) {
        self.state().standing_failure = Some(failure);
    }

    pub fn clear_failures(&self) {
        let mut state = self.state();
        state.queued_failures.clear();
        state.standing_failure = None;
    }

    /// From now on, a request with a `json_schema` `response_format` is answered HTTP 400 with
    /// OpenAI's envelope naming the parameter, as a server without structured output answers
    /// (`false`: answered again).
    pub fn refuse_structured(&self, refuse: bool) {
        self.state().refuse_structured = refuse;
    }

    /// The next structured answer goes wrong as `how` (FIFO, one each; plain-text requests do
    /// not use them up).
    pub fn misbehave_next(&self, how: Misbehave) {
        self.state().misbehaving.push_back(how);
    }

    /// Structured answers choose SKUs for cards (the default) or none.
    pub fn choose_products(&self, choose: bool) {
        self.state().no_cards = !choose;
    }

    /// Delay added before every answer. Requests wait concurrently, so N requests in flight all
    /// finish after about one `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    pub fn requests(&self) -> Vec<LlmRequest> {
        self.state().requests.clone()
    }

    /// Forgets the recorded requests; [`FakeLlm::request_count`] and
    /// [`FakeLlm::max_in_flight`] keep counting.
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// Chat-completions requests received since start, rejected ones included.
    pub fn request_count(&self) -> u64 {
        self.inner.shared.request_count.load(Ordering::Relaxed)
    }

    /// The most chat-completions requests ever being handled at once.
    pub fn max_in_flight(&self) -> u64 {
        self.inner.shared.max_in_flight.load(Ordering::Relaxed)
    }
}
