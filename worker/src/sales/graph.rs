//! Meta's limits, shared by every replica through Redis: a sliding one-second window per
//! merchant and endpoint (an hour for private replies), a pause per merchant when Meta throttles that account (for the
//! regain time of `X-Business-Use-Case-Usage` when it says), and a pause of the whole app when
//! Meta throttles the app itself (code 4): every merchant's calls count against that limit.
//! Time comes from Redis's clock, so replicas agree.

use std::time::Duration;

use igsales_meta::ThrottleScope;
use igsales_schema::MerchantId;

igsales_config::group! {
    /// How the worker keeps within Meta's limits.
    pub mod limits {
        GRAPH_SEND_RATE_PER_SEC => send_rate_per_sec: u32 = default "50", int(1, 100);
        /// Private replies to comments an account sends per hour (Meta allows 750).
        GRAPH_PRIVATE_REPLY_RATE_PER_HOUR => private_reply_rate_per_hour: u32 = default "750",
            int(1, 750);
        /// How long a throttled merchant waits when Meta gives no regain time.
        GRAPH_THROTTLE_WAIT_SECS => throttle_wait: Duration = default "60", secs(1, 3600);
        /// The longest pause a regain time from Meta can impose before calls are tried again.
        GRAPH_MAX_PAUSE_SECS => max_pause: Duration = default "3600", secs(1, 86_400);
    }
}
use igsales_jobs::RedisConn;

/// KEYS: the merchant's pause, the window, the app's pause. ARGV: limit, a unique member, the
/// window's length in ms. Returns 0 (go) or the ms to wait (the pauses first: a paused
/// merchant uses no slot of the window).
const WINDOW: &str = r"
local paused = math.max(redis.call('PTTL', KEYS[1]), redis.call('PTTL', KEYS[3]))
if paused > 0 then return paused end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local span = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - span)
if redis.call('ZCARD', KEYS[2]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[2], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[2], span * 2)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + span - now)
";

/// The endpoint key of private replies' hourly window.
pub const PRIVATE_REPLIES: &str = "private_replies";

#[derive(Clone)]
pub struct GraphGate {
    redis: RedisConn,
    limits: limits::Settings,
    window: std::sync::Arc<redis::Script>,
}

fn pause_key(merchant: MerchantId) -> String {
    format!("graph:pause:{merchant}")
}

/// Times Meta throttled the app as a whole.
pub const APP_THROTTLES: &str = "igsales_graph_app_throttles_total";

/// The pause of every merchant's calls (no merchant id is ever `app`).
pub const APP_PAUSE_KEY: &str = "graph:pause:app";

impl GraphGate {
    pub fn new(redis: RedisConn, limits: &limits::Settings) -> Self {
        GraphGate {
            redis,
            limits: limits.clone(),
            window: std::sync::Arc::new(redis::Script::new(WINDOW)),
        }
    }

    /// `Ok(None)`: go ahead (and the call is counted). `Ok(Some(d))`: wait `d` first. Every
    /// endpoint has the per-second Send API limit but private replies, which have their own
    /// hourly one.
    pub async fn admit(
        &self,
        merchant: MerchantId,
        endpoint: &str,
    ) -> redis::RedisResult<Option<Duration>> {
        let (limit, span_ms) = if endpoint == PRIVATE_REPLIES {
            (self.limits.private_reply_rate_per_hour, 3_600_000u64)
        } else {
            (self.limits.send_rate_per_sec, 1000)
        };
        let mut redis = self.redis.clone();
        let member = uuid::Uuid::new_v4().to_string();
        let wait_ms: u64 = self
            .window
            .key(pause_key(merchant))
            .key(format!("ratelimit:{merchant}:{endpoint}"))
            .key(APP_PAUSE_KEY)
            .arg(limit)
            .arg(member)
            .arg(span_ms)
            .invoke_async(&mut redis)
            .await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }

    /// Meta throttled a call of `merchant`: every replica holds off that merchant's calls, or
    /// every merchant's when the limit is the app's, for the regain time Meta gave
    /// (`GRAPH_THROTTLE_WAIT_SECS` when it gave none), at most `GRAPH_MAX_PAUSE_SECS`.
    /// Returns that wait.
    pub async fn throttled(
        &self,
        merchant: MerchantId,
        regain_after: Option<Duration>,
        scope: ThrottleScope,
    ) -> redis::RedisResult<Duration> {
        let wait = regain_after
            .unwrap_or(self.limits.throttle_wait)
            .min(self.limits.max_pause);
        let key = match scope {
            ThrottleScope::App => {
                metrics::counter!(APP_THROTTLES).increment(1);
                tracing::warn!(merchant.id = %merchant, wait_ms = wait.as_millis() as u64, "meta throttled the app: pausing every merchant's graph calls");
                APP_PAUSE_KEY.to_owned()
            }
            ThrottleScope::Account => pause_key(merchant),
        };
        self.pause(key, wait).await?;
        Ok(wait)
    }

    async fn pause(&self, key: String, d: Duration) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("PX")
            .arg(d.as_millis().max(1) as u64)
            .query_async(&mut redis)
            .await
    }
}
