//! The worker's `/metrics`, `/healthz` and `/readyz` on `METRICS_PORT`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use igsales_jobs::probes;

use super::Context;

pub async fn serve<C: Context>(listener: tokio::net::TcpListener, ctx: Arc<C>) {
    let app = Router::new()
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(readyz::<C>))
        .route("/metrics", get(probes::metrics))
        .with_state(ctx);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server stopped");
    }
}

async fn readyz<C: Context>(State(ctx): State<Arc<C>>) -> (StatusCode, Json<serde_json::Value>) {
    ctx.ready().await
}
