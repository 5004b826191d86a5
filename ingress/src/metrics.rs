//! Metric names (all prefixed `igsales_`), the Prometheus recorder, and the request counter.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "igsales_http_requests_total";
pub const WEBHOOK_EVENTS: &str = "igsales_webhook_events_total";
pub const SIGNATURE_FAILURES: &str = "igsales_webhook_signature_failures_total";
pub const ENQUEUE_SECONDS: &str = "igsales_webhook_enqueue_seconds";
pub const DEPENDENCY_ERRORS: &str = "igsales_dependency_errors_total";
pub const LAST_WEBHOOK: &str = "igsales_webhook_last_received_timestamp_seconds";
pub const INVALID_PARKED: &str = "igsales_webhook_invalid_parked_total";
pub const OAUTH_RESULTS: &str = "igsales_oauth_callbacks_total";
pub const META_CALLBACKS: &str = "igsales_meta_callbacks_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (later calls reuse it).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
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
