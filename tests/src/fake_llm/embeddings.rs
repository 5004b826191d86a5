//! `POST /v1/embeddings`: a deterministic embedding of each input, offline.
//!
//! Each word of the folded text adds its character trigrams (padded like pg_trgm's, so word
//! starts and ends count), hashed into [`DIMENSIONS`] buckets with a hashed sign; the vector is
//! then scaled to unit length. Texts that share spellings are close: a typo, a plural, a word
//! inside a longer one. What it cannot show is meaning: "creme pro rosto" is not near
//! "hidratante facial", nor "lipstick" near "batom". It exercises the plumbing (stored per
//! product, recomputed when the text changes, blended with the lexical rank), not semantics.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json as value};

use super::Shared;
use super::failure::{OpenAiError, json};

/// The vectors' length.
pub const DIMENSIONS: usize = 256;

/// The fake model's embedding of `text` (unit length; all zeros for text without letters or
/// digits).
pub fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; DIMENSIONS];
    let folded = igsales_schema::products::fold(text);
    for word in folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let padded: Vec<char> = format!("  {word} ").chars().collect();
        for t in padded.windows(3) {
            let h = fnv1a(t.iter().collect::<String>().as_bytes());
            let sign = if h & (1 << 63) == 0 { 1.0 } else { -1.0 };
            v[(h % DIMENSIONS as u64) as usize] += sign;
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(crate) async fn embeddings(
    AxumState(shared): AxumState<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if let Some(error) = super::server::check_key(&shared.api_key, authorization.as_deref()) {
        return error.reply().into_response();
    }
    let invalid = |m: &str| OpenAiError::new(400, m, "invalid_request_error").reply();
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return invalid("We could not parse the JSON body of your request.").into_response();
    };
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    if model.is_empty() {
        return invalid("you must provide a model parameter").into_response();
    }
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => return invalid("'input' must be a string or an array of strings").into_response(),
    };
    let tokens: usize = inputs.iter().map(|i| i.split_whitespace().count()).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| value!({ "object": "embedding", "index": i, "embedding": embed(text) }))
        .collect();
    json(
        200,
        &value!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
        }),
    )
    .into_response()
}
