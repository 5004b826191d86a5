//! The worker's `/metrics`, `/healthz` and `/readyz` on `METRICS_PORT`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use igsales_jobs::probes;

use super::Shared;

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(probes::metrics))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server stopped");
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, Json<serde_json::Value>) {
    probes::readyz(&shared.db, &shared.redis, Duration::from_secs(2)).await
}
