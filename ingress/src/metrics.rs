//! Metric names (all prefixed `igsales_`), the Prometheus recorder, and the request counter.

use std::borrow::Cow;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
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

/// The routes' patterns, so their labels are static strings: counting a request allocates
/// nothing on the webhook's hot path.
const ROUTES: &[&str] = &[
    "/webhooks/instagram",
    "/healthz",
    "/readyz",
    "/metrics",
    "/meta/deauthorize",
    "/meta/data-deletion",
    "/meta/data-deletion/status",
    "/v1/merchants/{merchant_id}/instagram/connect",
    "/v1/merchants/{merchant_id}/instagram",
    "/oauth/instagram/start",
    "/oauth/instagram/callback",
];

fn route_label(path: Option<&MatchedPath>) -> Cow<'static, str> {
    match path {
        None => Cow::Borrowed("unmatched"),
        Some(p) => ROUTES
            .iter()
            .find(|r| **r == p.as_str())
            .map_or_else(|| Cow::Owned(p.as_str().to_owned()), |r| Cow::Borrowed(*r)),
    }
}

fn method_label(m: &Method) -> Cow<'static, str> {
    match *m {
        Method::GET => Cow::Borrowed("GET"),
        Method::POST => Cow::Borrowed("POST"),
        Method::HEAD => Cow::Borrowed("HEAD"),
        Method::OPTIONS => Cow::Borrowed("OPTIONS"),
        _ => Cow::Owned(m.as_str().to_owned()),
    }
}

fn status_label(s: StatusCode) -> Cow<'static, str> {
    match s.as_u16() {
        200 => Cow::Borrowed("200"),
        302 => Cow::Borrowed("302"),
        400 => Cow::Borrowed("400"),
        401 => Cow::Borrowed("401"),
        403 => Cow::Borrowed("403"),
        404 => Cow::Borrowed("404"),
        413 => Cow::Borrowed("413"),
        500 => Cow::Borrowed("500"),
        503 => Cow::Borrowed("503"),
        other => Cow::Owned(other.to_string()),
    }
}

/// Counts every request by its route pattern (never the raw path, which holds ids) and status.
pub async fn track(req: Request, next: Next) -> Response {
    let route = route_label(req.extensions().get::<MatchedPath>());
    let method = method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    metrics::counter!(
        HTTP_REQUESTS,
        "route" => route.clone(),
        "method" => method,
        "status" => status_label(response.status())
    )
    .increment(1);
    metrics::histogram!("igsales_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_labels_are_static_and_others_still_named() {
        assert!(matches!(route_label(None), Cow::Borrowed("unmatched")));
        assert!(matches!(method_label(&Method::POST), Cow::Borrowed("POST")));
        assert!(matches!(status_label(StatusCode::OK), Cow::Borrowed("200")));
        assert_eq!(status_label(StatusCode::IM_A_TEAPOT), "418");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
    }
}
