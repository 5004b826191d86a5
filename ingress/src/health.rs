//! Readiness on the ingress's state; liveness and metrics are `igsales_jobs::probes` as they are.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use crate::AppState;

/// Both dependencies within the Redis reply timeout.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let timeout = state.settings.redis.response_timeout;
    igsales_jobs::probes::readyz(&state.db, &state.redis, timeout).await
}
