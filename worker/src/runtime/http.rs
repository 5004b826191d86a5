//! The worker's `/metrics`, `/healthz` and `/readyz` on `METRICS_PORT`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::Shared;

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server stopped");
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, Json<serde_json::Value>) {
    let timeout = Duration::from_secs(2);
    let mut redis = shared.redis.clone();
    let redis_ok = tokio::time::timeout(
        timeout,
        redis::cmd("PING").query_async::<String>(&mut redis),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let db_ok = tokio::time::timeout(timeout, shared.db.ping())
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

async fn metrics() -> Response {
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
