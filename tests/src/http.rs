//! The tests' HTTP client and the answer they read: blocking ureq, a status is an answer (not an
//! error) and redirects are not followed, so tests see exactly what the server said.
//!
//! Test bodies on a multi-thread runtime may call the blocking functions directly (the server
//! is served by the other workers); [`get`] and [`post`] run them off the async threads.

use std::time::Duration;

use ureq::Body;
use ureq::http::Response;

/// What a server answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// Reads the whole of `response`; an error if the body breaks off.
    pub fn read(mut response: Response<Body>) -> Result<Answer, ureq::Error> {
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        Ok(Answer {
            status: response.status().as_u16(),
            headers,
            body: response.body_mut().read_to_string()?,
        })
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// The client, giving up on a whole exchange after `timeout`.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// The answer of an exchange, or its transport error (refused, timed out, cut off) for callers
/// that wait for a server or count failures.
pub fn try_answer(exchange: Result<Response<Body>, ureq::Error>) -> Result<Answer, ureq::Error> {
    Answer::read(exchange?)
}

/// The answer of an exchange that must complete.
#[track_caller]
pub fn answer(exchange: Result<Response<Body>, ureq::Error>) -> Answer {
    try_answer(exchange).unwrap_or_else(|e| panic!("HTTP exchange: {e}"))
}

/// How long [`get`] and [`post`] wait.
const TIMEOUT: Duration = Duration::from_secs(10);

/// GET with extra headers.
pub async fn get(url: String, headers: Vec<(String, String)>) -> Answer {
    tokio::task::spawn_blocking(move || {
        let mut req = agent(TIMEOUT).get(&url);
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        answer(req.call())
    })
    .await
    .expect("join")
}

/// POST a body with extra headers.
pub async fn post(url: String, body: String, headers: Vec<(String, String)>) -> Answer {
    tokio::task::spawn_blocking(move || {
        let mut req = agent(TIMEOUT).post(&url);
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        answer(req.send(body.as_bytes()))
    })
    .await
    .expect("join")
}
