//! Metric names (all prefixed `igsales_`), the Prometheus recorder, and the request counter.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::PrometheusHandle;

pub const HTTP_REQUESTS: &str = "igsales_http_requests_total";
pub const WEBHOOK_EVENTS: &str = "igsales_webhook_events_total";
pub const SIGNATURE_FAILURES: &str = "igsales_webhook_signature_failures_total";
pub const ENQUEUE_SECONDS: &str = "igsales_webhook_enqueue_seconds";
pub const DEPENDENCY_ERRORS: &str = "igsales_dependency_errors_total";
pub const LAST_WEBHOOK: &str = "igsales_webhook_last_received_timestamp_seconds";
pub const INVALID_PARKED: &str = "igsales_webhook_invalid_parked_total";
/// Deliveries answered 503 by the ingress itself: `overloaded`, past the `deadline`, or too
/// few `replicas` acknowledged the writes (`REDIS_MIN_REPLICAS_ACK`).
pub const WEBHOOK_REFUSED: &str = "igsales_webhook_refused_total";
pub const OAUTH_RESULTS: &str = "igsales_oauth_callbacks_total";
pub const META_CALLBACKS: &str = "igsales_meta_callbacks_total";

/// The process-wide recorder (installed once).
pub fn handle() -> Option<&'static PrometheusHandle> {
    igsales_config::prometheus()
}

/// Counts every request by its route pattern (never the raw path, which holds ids) and status.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    metrics::counter!(
        HTTP_REQUESTS,
        "route" => route.clone(),
        "method" => method,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    metrics::histogram!("igsales_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
