//! Embeddings for semantic catalog search: the OpenAI-compatible `POST {OPENAI_BASE_URL}/embeddings`
//! (key and base URL of the model group), through the chat client's POST with its own timeout
//! and a bound on calls in flight. Off unless OPENAI_EMBEDDING_MODEL names a model.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tokio::sync::Semaphore;

use crate::sales::llm::{LlmError, model, post_json};

/// Embedding calls in flight at once per process (each holds a blocking thread).
const MAX_IN_FLIGHT: usize = 8;

fn model_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 200 {
        Err("expected a model name".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

igsales_config::group! {
    /// Semantic catalog search (off when no model is set).
    pub mod embedding {
        /// The embedding model, e.g. text-embedding-3-small; unset: search is lexical only.
        OPENAI_EMBEDDING_MODEL => model: Option<String> = optional,
            parsed("a model name", model_name);
        OPENAI_EMBEDDING_TIMEOUT_MS => timeout: Duration = default "5000", millis(1, 600_000);
        /// Texts per request when a catalog is embedded.
        OPENAI_EMBEDDING_BATCH => batch: usize = default "64", amount("a count", 1, 2048);
    }
}

#[derive(Clone)]
pub struct EmbeddingClient {
    model: Arc<model::Settings>,
    name: String,
    pub batch: usize,
    agent: ureq::Agent,
    permits: Arc<Semaphore>,
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: &'a [String],
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    index: usize,
    embedding: Vec<f32>,
}

impl EmbeddingClient {
    /// `None` when OPENAI_EMBEDDING_MODEL is unset.
    pub fn new(
        model: &model::Settings,
        cfg: &embedding::Settings,
        dns_cache: Duration,
    ) -> Option<Self> {
        let name = cfg.model.clone()?;
        let agent = igsales_meta::http::agent(&igsales_meta::http::AgentSettings {
            timeout: cfg.timeout,
            connect_timeout: cfg.timeout.min(Duration::from_secs(3)),
            max_connections: MAX_IN_FLIGHT,
            dns_cache_ttl: dns_cache,
            user_agent: None,
        });
        Some(EmbeddingClient {
            model: Arc::new(model.clone()),
            name,
            batch: cfg.batch,
            agent,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    /// The model the vectors come from (part of each stored embedding's key).
    pub fn model(&self) -> &str {
        &self.name
    }

    /// One unit-length vector per text, in order.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, LlmError> {
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LlmError::Transport("client closed".into()))?;
        let body = serde_json::to_vec(&Request {
            model: &self.name,
            input: &texts,
        })
        .map_err(|e| LlmError::Decode(e.to_string()))?;
        let expected = texts.len();
        post_json(
            &self.agent,
            &self.model,
            "/embeddings",
            body,
            false,
            move |b| {
                let mut parsed: Response =
                    b.read_json().map_err(|e| LlmError::Decode(e.to_string()))?;
                if parsed.data.len() != expected {
                    return Err(LlmError::Decode("one embedding per input expected".into()));
                }
                parsed.data.sort_by_key(|i| i.index);
                Ok(parsed.data.into_iter().map(|i| unit(i.embedding)).collect())
            },
        )
        .await
    }
}

/// Scaled to length 1 (OpenAI's already are): the search compares dot products.
fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}
