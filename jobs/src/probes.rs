//! `/healthz`, `/readyz` and `/metrics` as both binaries answer them (the ingress on its port,
//! the worker on `METRICS_PORT`).
//!
//! Here because this crate already holds what ingress and worker share about Redis, the
//! connection readiness pings; the Postgres half comes from the schema crate, which both
//! binaries use anyway.

use std::time::Duration;

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use igsales_schema::Db;
use redis::aio::ConnectionManager;
use serde_json::json;

pub async fn healthz() -> &'static str {
    "ok"
}

/// 200 when both Redis and Postgres answer within `timeout`; 503 naming the one that does not.
pub async fn readyz(
    db: &Db,
    redis: &ConnectionManager,
    timeout: Duration,
) -> (StatusCode, Json<serde_json::Value>) {
    let mut redis = redis.clone();
    let redis_ok = tokio::time::timeout(
        timeout,
        redis::cmd("PING").query_async::<String>(&mut redis),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let db_ok = tokio::time::timeout(timeout, db.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    let word = |ok: bool| if ok { "ok" } else { "error" };
    let status = if redis_ok && db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "redis": word(redis_ok), "postgres": word(db_ok) })),
    )
}

/// Prometheus text from the process-wide recorder (nginx does not expose this route).
pub async fn metrics() -> Response {
    match igsales_config::prometheus() {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable",
        )
            .into_response(),
    }
}
