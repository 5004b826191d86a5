//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use crate::AppState;

pub async fn healthz() -> &'static str {
    "ok"
}

/// 200 when both Redis and Postgres answer within the probe timeout; 503 naming the one that
/// does not.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let mut redis = state.redis.clone();
    let redis_ok = tokio::time::timeout(
        state.probe_timeout,
        redis::cmd("PING").query_async::<String>(&mut redis),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let db_ok = tokio::time::timeout(state.probe_timeout, state.db.ping())
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
