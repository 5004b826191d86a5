//! Cross-cutting HTTP behaviour: metrics, error shape, security headers.

mod common;

use common::{Harness, IG_SECRET, deliver};
use igsales_tests::fake_meta::webhook::{envelope, messaging_entry, text_message};
use igsales_tests::http::{get, post};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_by_route_and_status_and_time_the_enqueue() {
    let h = Harness::start().await;
    h.merchant_with_account("17841400538867190").await;
    let body = envelope(&[messaging_entry(
        "17841400538867190",
        1,
        vec![text_message(
            "1",
            "17841400538867190",
            "mid-metrics",
            "oi",
            1,
        )],
    )]);
    assert_eq!(deliver(&h, &body, IG_SECRET).await.status, 200);
    assert_eq!(deliver(&h, &body, IG_SECRET).await.status, 200);
    assert_eq!(deliver(&h, &body, "wrong").await.status, 401);
    let text = get(h.url("/metrics"), vec![]).await.body;
    for needle in [
        r#"igsales_http_requests_total{route="/webhooks/instagram",method="POST",status="200"}"#,
        r#"igsales_http_requests_total{route="/webhooks/instagram",method="POST",status="401"}"#,
        r#"igsales_webhook_events_total{kind="message",result="enqueued"}"#,
        r#"igsales_webhook_events_total{kind="message",result="duplicate"}"#,
        r#"igsales_webhook_signature_failures_total{reason="mismatch"}"#,
        "igsales_webhook_enqueue_seconds_bucket",
        "igsales_webhook_last_received_timestamp_seconds",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    // Raw paths (which carry ids) never become labels.
    let _ = get(
        h.url("/v1/merchants/3f0c5a4e-8d8e-4d39-9d4b-5c6a6b0c2f11/instagram"),
        vec![],
    )
    .await;
    let text = get(h.url("/metrics"), vec![]).await.body;
    assert!(text.contains(r#"route="/v1/merchants/{merchant_id}/instagram""#));
    assert!(!text.contains("3f0c5a4e-8d8e"));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_response_carries_security_headers_and_errors_share_one_json_shape() {
    let h = Harness::start_with(|s| s.webhook.max_body_bytes = 1024).await;
    let cases = [
        get(h.url("/healthz"), vec![]).await,
        get(h.url("/nope"), vec![]).await,
        post(h.url("/webhooks/instagram"), "{}".into(), vec![]).await,
        post(h.url("/webhooks/instagram"), "x".repeat(2048), vec![]).await,
        get(h.url("/oauth/instagram/start?ticket=unknown"), vec![]).await,
    ];
    let statuses: Vec<u16> = cases.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 404, 401, 413, 302]);
    for r in &cases {
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r:?}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{r:?}");
    }
    for r in &cases[1..4] {
        let e = r.json();
        assert!(
            e["error"]["code"].is_string() && e["error"]["message"].is_string(),
            "{e}"
        );
    }
    assert_eq!(cases[4].header("cache-control"), Some("no-store"));
    assert_eq!(cases[4].header("referrer-policy"), Some("no-referrer"));
}
