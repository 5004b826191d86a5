//! `GET`/`POST /webhooks/instagram` (SPEC §4.1).
//!
//! Order of work for a delivery, and why:
//! 1. The body is capped while it is read (413 before it is buffered whole).
//! 2. The signature is checked over the raw bytes before anything is parsed (401).
//! 3. The rest runs in a spawned task, so a client hanging up (hyper then drops the handler's
//!    future) cannot stop it half-way; the handler only waits for its outcome.
//! 4. Per event: if its claim exists it is a duplicate; otherwise its job is written, then its
//!    claim. All of a delivery's events go in one Redis script call (`igsales_jobs::ingest`):
//!    one round trip, and atomic, so two deliveries of one event racing push one job. The
//!    claim follows its job even within the script (a script stopped by an error keeps the
//!    writes before it), so there is never a claim without a job; a job without a claim (the
//!    script's answer lost) is pushed again on redelivery and the worker's UNIQUE
//!    `(merchant_id, event_id)` absorbs the copy.
//! 5. 200 `EVENT_RECEIVED` only when every new event's push was acknowledged; Redis (or, for
//!    an uncached account, Postgres) down → 503 and Meta delivers again.
//! 6. With `REDIS_MIN_REPLICAS_ACK` = N > 0, also only once N replicas hold the writes (`WAIT`),
//!    so losing the primary cannot lose a delivery answered 200. Fewer → 503: if the primary
//!    then dies, the promoted replica has neither claim nor job and the redelivery enqueues the
//!    event; if it lives, the claim makes the redelivery a duplicate of a job that exists.

use std::collections::{HashMap, HashSet};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use igsales_jobs::ingest::{Arrival, Ingest};
use igsales_jobs::{InboundEventV1, WEBHOOK_INVALID};
use igsales_meta::event_id;
use igsales_meta::webhook::{
    Classified, Entry, Envelope, EventKind, classify_change, classify_messaging,
};
use igsales_schema::MerchantId;
use serde_json::value::RawValue;

use crate::AppState;
use crate::auth::sha256_hex;
use crate::error::AppError;
use crate::metrics::{
    ENQUEUE_SECONDS, INVALID_PARKED, LAST_WEBHOOK, SIGNATURE_FAILURES, WEBHOOK_EVENTS,
    WEBHOOK_REFUSED,
};

/// Meta's verification handshake: echo `hub.challenge` byte for byte when the mode is
/// `subscribe` and the token matches (constant time); else 403.
pub async fn handshake(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let token_ok = q
        .get("hub.verify_token")
        .is_some_and(|t| state.verify_token.matches(t.as_bytes()));
    match (q.get("hub.mode").map(String::as_str), q.get("hub.challenge")) {
        (Some("subscribe"), Some(challenge)) if token_ok => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            challenge.clone(),
        )
            .into_response(),
        _ => (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({"error": {"code": "forbidden", "message": "verification failed"}})),
        )
            .into_response(),
    }
}

pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let body = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(AppError::PayloadTooLarge);
        }
        Err(_) => {
            return Err(AppError::BadRequest(
                "bad_body",
                "the body could not be read",
            ));
        }
    };
    let signature = headers.get("x-hub-signature-256").map(|v| v.as_bytes());
    if let Err(e) = state.verifier.verify(signature, &body) {
        metrics::counter!(SIGNATURE_FAILURES, "reason" => e.reason()).increment(1);
        return Err(AppError::Unauthorized("invalid X-Hub-Signature-256"));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(LAST_WEBHOOK).set(now);

    // Overloaded: refuse at once rather than queue up work Meta will have given up on.
    let Ok(permit) = state.webhook_permits.clone().try_acquire_owned() else {
        metrics::counter!(WEBHOOK_REFUSED, "reason" => "overloaded").increment(1);
        return Err(AppError::Unavailable(
            "capacity",
            "WEBHOOK_MAX_IN_FLIGHT deliveries in flight".to_owned(),
        ));
    };
    let task_state = state.clone();
    let work = tokio::spawn(async move {
        let _permit = permit;
        process(&task_state, &body).await
    });
    // Past the deadline the answer is 503, and the task goes on to its end: every step keeps
    // the invariant above (never a claim without its job), so whatever it finishes is
    // absorbed as a duplicate when Meta delivers again.
    match tokio::time::timeout(state.settings.webhook.deadline, work).await {
        Ok(Ok(Ok(()))) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "EVENT_RECEIVED",
        )
            .into_response()),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(join)) => Err(AppError::Internal(format!("webhook task failed: {join}"))),
        Err(_) => {
            metrics::counter!(WEBHOOK_REFUSED, "reason" => "deadline").increment(1);
            Err(AppError::Unavailable(
                "deadline",
                "the delivery's work passed WEBHOOK_DEADLINE_MS".to_owned(),
            ))
        }
    }
}

// Both labels are static: nothing is allocated per event to count it.
fn count(kind: &'static str, result: &'static str) {
    metrics::counter!(WEBHOOK_EVENTS, "kind" => kind, "result" => result).increment(1);
}

/// An event ready to be claimed and enqueued.
struct Pending {
    merchant: MerchantId,
    account: String,
    event_id: String,
    kind: EventKind,
    entry_time_ms: Option<i64>,
    raw: Box<RawValue>,
}

/// `dedupe:{merchant_id}:{first 32 hex of SHA-256(event_id)}`.
pub fn claim_key(merchant: MerchantId, event_id: &str) -> String {
    let digest = sha256_hex(&[event_id.as_bytes()]);
    format!("dedupe:{merchant}:{}", &digest[..32])
}

async fn process(state: &AppState, body: &[u8]) -> Result<(), AppError> {
    let envelope: Envelope<'_> = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(_) => return park_invalid(state, body, "not an Instagram webhook envelope").await,
    };
    if envelope.object != "instagram" {
        count("object", "ignored");
        return Ok(());
    }
    let mut pending = Vec::new();
    let mut invalid = false;
    for raw_entry in envelope.entry {
        let Ok(entry) = serde_json::from_str::<Entry<'_>>(raw_entry.get()) else {
            invalid = true;
            count("entry", "invalid");
            continue;
        };
        let merchant = state
            .accounts
            .resolve(entry.id.as_str())
            .await
            .map_err(|e| AppError::db(&e))?;
        let entry_time_ms = entry.time_ms();
        let mut items: Vec<(&RawValue, Classified)> = Vec::new();
        for raw in entry.messaging.iter().flatten() {
            items.push((raw, classify_messaging(raw)));
        }
        for raw in entry.changes.iter().flatten() {
            items.push((raw, classify_change(raw)));
        }
        if entry.field.is_some() {
            items.push((raw_entry, classify_change(raw_entry)));
        }
        // Standby events belong to another app in a handover; nothing of ours to do.
        for _ in entry.standby.iter().flatten() {
            count("standby", "ignored");
        }
        for (raw, classified) in items {
            match classified {
                Classified::Event { kind, id } => {
                    let Some(merchant) = merchant else {
                        count(kind.as_str(), "unrouted");
                        continue;
                    };
                    pending.push(Pending {
                        merchant,
                        account: entry.id.0.clone(),
                        event_id: id.unwrap_or_else(|| event_id::hashed(merchant, raw)),
                        kind,
                        entry_time_ms,
                        raw: raw.to_owned(),
                    });
                }
                Classified::SelfTest => count("message", "ignored"),
                Classified::Unknown => count("unknown", "ignored"),
                Classified::Invalid => {
                    invalid = true;
                    count("event", "invalid");
                }
            }
        }
    }
    if invalid {
        // The readable events still go through; the whole body is kept for a fix and replay
        // (a replay's known events are then duplicates).
        park_invalid(state, body, "an entry or event could not be read").await?;
    }
    enqueue(state, pending).await
}

/// The claim-and-push script, loaded once.
static INGEST: std::sync::LazyLock<Ingest> = std::sync::LazyLock::new(Ingest::new);

/// Claims and enqueues in one Redis round trip; see the module comment for the order.
async fn enqueue(state: &AppState, events: Vec<Pending>) -> Result<(), AppError> {
    // The same event twice in one delivery is one event.
    let mut seen = HashSet::new();
    let events: Vec<Pending> = events
        .into_iter()
        .filter(|e| {
            let fresh = seen.insert((e.merchant, e.event_id.clone()));
            if !fresh {
                count(e.kind.as_str(), "duplicate");
            }
            fresh
        })
        .collect();
    if events.is_empty() {
        return Ok(());
    }
    let received_at = Utc::now();
    let arrivals: Vec<Arrival> = events
        .into_iter()
        .map(|event| Arrival {
            claim: claim_key(event.merchant, &event.event_id),
            job: InboundEventV1 {
                merchant_id: event.merchant.0,
                instagram_account_id: event.account,
                event_id: event.event_id,
                kind: event.kind,
                entry_time_ms: event.entry_time_ms,
                received_at,
                event: event.raw,
                delivery: igsales_jobs::Delivery::default(),
            },
        })
        .collect();
    let mut redis = state.redis.clone();
    // The connection the writes go over, for the replicas' acknowledgement at the end.
    let generation = redis.generation();
    let started = Instant::now();
    let pushed = INGEST
        .claim_and_push(
            &mut redis,
            &arrivals,
            state.settings.webhook.dedupe_ttl.as_secs(),
            state.settings.webhook.min_replicas_ack > 0,
        )
        .await
        .map_err(AppError::redis)?;
    metrics::histogram!(ENQUEUE_SECONDS).record(started.elapsed().as_secs_f64());
    replicated(state, &mut redis, generation).await?;
    for (a, new) in arrivals.iter().zip(pushed) {
        let kind = a.job.kind;
        count(
            kind.as_str(),
            match (new, kind) {
                (false, _) => "duplicate",
                (true, EventKind::Echo) => "echo",
                (true, _) => "enqueued",
            },
        );
    }
    Ok(())
}

/// `WAIT` for `REDIS_MIN_REPLICAS_ACK` replicas to hold every write sent so far on this
/// connection (the push and the claims among them). `WAIT` counts only this connection's
/// writes: after the connection moved to another master the count means nothing, so → 503.
async fn replicated(
    state: &AppState,
    redis: &mut igsales_jobs::RedisConn,
    generation: u64,
) -> Result<(), AppError> {
    let want = state.settings.webhook.min_replicas_ack;
    if want == 0 {
        return Ok(());
    }
    let timeout_ms = u64::try_from(state.settings.webhook.wait_timeout.as_millis()).unwrap_or(1);
    let acked: i64 = redis::cmd("WAIT")
        .arg(want)
        .arg(timeout_ms)
        .query_async(redis)
        .await
        .map_err(AppError::redis)?;
    if redis.generation() != generation {
        metrics::counter!(WEBHOOK_REFUSED, "reason" => "replicas").increment(1);
        return Err(AppError::Unavailable(
            "redis",
            "the Redis master changed while the delivery was written".to_owned(),
        ));
    }
    if acked < i64::from(want) {
        metrics::counter!(WEBHOOK_REFUSED, "reason" => "replicas").increment(1);
        return Err(AppError::Unavailable(
            "redis",
            format!("{acked} of REDIS_MIN_REPLICAS_ACK={want} replicas acknowledged in time"),
        ));
    }
    Ok(())
}

/// Keeps a signed but unreadable payload in the capped `dlq:webhook_invalid` list.
async fn park_invalid(state: &AppState, body: &[u8], reason: &str) -> Result<(), AppError> {
    let mut record = serde_json::json!({
        "received_at": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "reason": reason,
    });
    match std::str::from_utf8(body) {
        Ok(text) => record["body"] = text.into(),
        Err(_) => {
            use base64::Engine as _;
            record["body_base64"] = base64::engine::general_purpose::STANDARD
                .encode(body)
                .into();
        }
    }
    let cap = state.settings.webhook.invalid_dlq_max;
    let mut redis = state.redis.clone();
    igsales_jobs::push_dead_letter(&mut redis, WEBHOOK_INVALID, &record.to_string(), cap)
        .await
        .map_err(AppError::redis)?;
    metrics::counter!(INVALID_PARKED).increment(1);
    count("payload", "invalid");
    Ok(())
}
