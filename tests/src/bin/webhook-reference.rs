//! `webhook-reference`: the least a webhook receiver can do, as the floor the ingress is
//! measured against (`scripts/bench-webhooks-compare`; on demand, never deployed). Per delivery:
//! check `X-Hub-Signature-256` (HMAC-SHA256 over the raw body), parse the envelope, and per
//! messaging event with a `mid`: `SET dedupe:{merchant}:{sha256(event id)[..32]} 1 NX EX` and,
//! when new, `LPUSH` a small JSON job on `--job-list`. No metrics, no deadline, no batching,
//! no replicas, no apalis layout, no invalid-payload parking: what our ingress does beyond
//! this is what the comparison prices.
//!
//! Reads PORT, REDIS_URL and IG_APP_SECRET as the ingress does, and the `ACCOUNT=MERCHANT`
//! pairs of `--accounts` (the file `scripts/bench-webhooks` writes).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use clap::Parser;
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Parser)]
struct Args {
    #[arg(long, env = "PORT")]
    port: u16,
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    #[arg(long, env = "IG_APP_SECRET", hide_env_values = true)]
    secret: String,
    /// `ACCOUNT=MERCHANT` lines.
    #[arg(
        long,
        env = "REFERENCE_ACCOUNTS",
        default_value = ".dev/bench/accounts.txt"
    )]
    accounts: String,
    #[arg(long, default_value = "reference:jobs")]
    job_list: String,
    #[arg(long, default_value_t = 172_800)]
    dedupe_ttl_secs: u64,
}

struct App {
    key: ring::hmac::Key,
    merchants: HashMap<String, String>,
    redis: redis::aio::MultiplexedConnection,
    job_list: String,
    ttl: u64,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    entry: Vec<Entry<'a>>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    id: String,
    #[serde(borrow, default)]
    messaging: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    message: Option<Mid<'a>>,
}

#[derive(Deserialize)]
struct Mid<'a> {
    #[serde(borrow)]
    mid: Option<std::borrow::Cow<'a, str>>,
}

fn verified(key: &ring::hmac::Key, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(given) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    ring::hmac::verify(key, body, &given).is_ok()
}

async fn receive(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if !verified(&app.key, &headers, &body) {
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope<'_>>(&body) else {
        return StatusCode::OK;
    };
    let mut redis = app.redis.clone();
    for entry in envelope.entry {
        let Some(merchant) = app.merchants.get(&entry.id) else {
            continue;
        };
        for raw in entry.messaging {
            let Some(mid) = serde_json::from_str::<Event<'_>>(raw.get())
                .ok()
                .and_then(|e| e.message)
                .and_then(|m| m.mid)
            else {
                continue;
            };
            let event_id = format!("message:{mid}");
            let digest = ring::digest::digest(&ring::digest::SHA256, event_id.as_bytes());
            let claim = format!("dedupe:{merchant}:{}", &hex::encode(digest)[..32]);
            let won: redis::RedisResult<Option<String>> = redis::cmd("SET")
                .arg(&claim)
                .arg("1")
                .arg("NX")
                .arg("EX")
                .arg(app.ttl)
                .query_async(&mut redis)
                .await;
            match won {
                Ok(Some(_)) => {}
                Ok(None) => continue,
                Err(_) => return StatusCode::SERVICE_UNAVAILABLE,
            }
            let job = serde_json::json!({
                "merchant_id": merchant,
                "instagram_account_id": entry.id,
                "event_id": event_id,
                "event": raw,
            });
            let pushed: redis::RedisResult<i64> = redis::cmd("LPUSH")
                .arg(&app.job_list)
                .arg(job.to_string())
                .query_async(&mut redis)
                .await;
            if pushed.is_err() {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
        }
    }
    StatusCode::OK
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let merchants = std::fs::read_to_string(&args.accounts)
        .with_context(|| format!("reading {}", args.accounts))?
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(a, m)| (a.trim().to_owned(), m.trim().to_owned()))
        .collect();
    // Bounded waits, as the ingress has (Meta gives up after 5 s).
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
        .set_response_timeout(Some(std::time::Duration::from_secs(2)));
    let redis = redis::Client::open(args.redis_url.as_str())?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("connecting to Redis")?;
    let app = Arc::new(App {
        key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, args.secret.as_bytes()),
        merchants,
        redis,
        job_list: args.job_list,
        ttl: args.dedupe_ttl_secs,
    });
    let router = axum::Router::new()
        .route("/webhooks/instagram", post(receive))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    axum::serve(listener, router).await?;
    Ok(())
}
