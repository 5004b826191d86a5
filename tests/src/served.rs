//! What the fake servers have in common: an axum router served on its own task until the last
//! handle drops, and responses checked before they go out.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

pub(crate) struct Served<S> {
    pub(crate) shared: Arc<S>,
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl<S> Served<S> {
    /// Binds `addr` and serves `app` (built on `shared`) until dropped.
    pub(crate) async fn start(
        addr: SocketAddr,
        shared: Arc<S>,
        app: axum::Router,
        name: &'static str,
    ) -> std::io::Result<Served<S>> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("{name}: server stopped: {e}");
            }
        });
        Ok(Served { shared, addr, task })
    }

    /// `http://127.0.0.1:PORT` (a wildcard bind is reached through loopback).
    pub(crate) fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }
}

impl<S> Drop for Served<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A fake's response before it becomes an axum one, so header values are checked in one place.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn typed(status: u16, content_type: &str, body: String) -> Self {
        Self {
            status,
            headers: vec![("content-type".to_owned(), content_type.to_owned())],
            body,
        }
    }

    pub(crate) fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let Ok(status) = StatusCode::from_u16(self.status) else {
            return invalid(format!("status {}", self.status));
        };
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = status;
        for (name, value) in self.headers {
            // Raw failures carry test-written headers; say which one is bad rather than panic.
            let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) else {
                return invalid(format!("header {name}: {value}"));
            };
            response.headers_mut().append(n, v);
        }
        response
    }
}

fn invalid(what: String) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("fake server: invalid scripted response ({what})"),
    )
        .into_response()
}
