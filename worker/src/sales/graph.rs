//! Meta's limits, shared by every replica through Redis: a sliding one-second window per
//! merchant and endpoint, and a pause per merchant when Meta says when access comes back
//! (`X-Business-Use-Case-Usage`). Time comes from Redis's clock, so replicas agree.

use std::time::Duration;

use igsales_schema::MerchantId;

igsales_config::group! {
    /// How the worker keeps within Meta's limits.
    pub mod limits {
        GRAPH_SEND_RATE_PER_SEC => send_rate_per_sec: u32 = default "50", int(1, 100);
        /// How long a throttled merchant waits when Meta gives no regain time.
        GRAPH_THROTTLE_WAIT_SECS => throttle_wait: Duration = default "60", secs(1, 3600);
        /// The longest pause a regain time from Meta can impose before calls are tried again.
        GRAPH_MAX_PAUSE_SECS => max_pause: Duration = default "3600", secs(1, 86_400);
    }
}
use igsales_jobs::RedisConn;

/// KEYS: the merchant's pause, the window. ARGV: limit, a unique member. Returns 0 (go) or the
/// ms to wait (the pause first: a paused merchant uses no slot of the window).
const WINDOW: &str = r"
local paused = redis.call('PTTL', KEYS[1])
if paused > 0 then return paused end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 1000)
if redis.call('ZCARD', KEYS[2]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[2], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[2], 2000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + 1000 - now)
";

#[derive(Clone)]
pub struct GraphGate {
    redis: RedisConn,
    limits: limits::Settings,
    window: std::sync::Arc<redis::Script>,
}

fn pause_key(merchant: MerchantId) -> String {
    format!("graph:pause:{merchant}")
}

impl GraphGate {
    pub fn new(redis: RedisConn, limits: &limits::Settings) -> Self {
        GraphGate {
            redis,
            limits: limits.clone(),
            window: std::sync::Arc::new(redis::Script::new(WINDOW)),
        }
    }

    /// `Ok(None)`: go ahead (and the call is counted). `Ok(Some(d))`: wait `d` first.
    pub async fn admit(
        &self,
        merchant: MerchantId,
        endpoint: &str,
    ) -> redis::RedisResult<Option<Duration>> {
        let mut redis = self.redis.clone();
        let member = uuid::Uuid::new_v4().to_string();
        let wait_ms: u64 = self
            .window
            .key(pause_key(merchant))
            .key(format!("ratelimit:{merchant}:{endpoint}"))
            .arg(self.limits.send_rate_per_sec)
            .arg(member)
            .invoke_async(&mut redis)
            .await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }

    /// Meta throttled `merchant`: every replica holds off its calls for the regain time Meta
    /// gave (`GRAPH_THROTTLE_WAIT_SECS` when it gave none), at most `GRAPH_MAX_PAUSE_SECS`.
    /// Returns that wait.
    pub async fn throttled(
        &self,
        merchant: MerchantId,
        regain_after: Option<Duration>,
    ) -> redis::RedisResult<Duration> {
        let wait = regain_after
            .unwrap_or(self.limits.throttle_wait)
            .min(self.limits.max_pause);
        self.pause(merchant, wait).await?;
        Ok(wait)
    }

    async fn pause(&self, merchant: MerchantId, d: Duration) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        redis::cmd("SET")
            .arg(pause_key(merchant))
            .arg(1)
            .arg("PX")
            .arg(d.as_millis().max(1) as u64)
            .query_async(&mut redis)
            .await
    }
}
