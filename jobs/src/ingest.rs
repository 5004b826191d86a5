//! The ingress's one Redis round trip per delivery (SPEC §4.1): one script checks each
//! event's dedupe claim, writes the job of each new one exactly as apalis-redis's push does
//! (so the worker's apalis fetch takes it unchanged), and sets its claim, for every event of the
//! delivery at once. Atomic: two deliveries of one event racing each other push one job.
//!
//! The claim key, its value and its TTL are the ones the ingress always set, so an event claimed
//! before this script (or by an older ingress during a rolling deploy) is a duplicate here too.
//! The contract tests (`tests/tests/ingest.rs`) compare what this writes with apalis-redis's own
//! push on a scratch Redis and run it through a real apalis fetch, so an apalis upgrade that
//! changes the layout fails them.

use std::time::{SystemTime, UNIX_EPOCH};

use apalis_redis::Config;

use crate::inbound::{InboundEventV1, InboundSignalV1};
use crate::queue::Job;

/// What apalis-redis's push writes for a job pushed without options: attempts 0, at most 25
/// (its default; its retry of failed jobs counts against it), status Pending, no idempotency
/// key, scheduled for now.
const SCRIPT: &str = r"
local n = #KEYS - 6
if n < 1 or #ARGV ~= 3 + 3 * n then
  return redis.error_reply('ERR ingest: keys and arguments do not match')
end
local pushed = {}
for i = 1, n do
  local claim = KEYS[6 + i]
  local at = 4 + 3 * (i - 1)
  if redis.call('EXISTS', claim) == 1 then
    -- Rewritten when replicas must acknowledge: a claim whose first delivery failed its WAIT
    -- may not be on a replica yet, and this write puts it in the stream the WAIT covers.
    if ARGV[2] == '1' then
      redis.call('SET', claim, '1', 'XX', 'KEEPTTL')
    end
    pushed[i] = 0
  else
    local queue = tonumber(ARGV[at])
    local id = ARGV[at + 1]
    if redis.call('HSETNX', KEYS[queue + 1], id, ARGV[at + 2]) == 1 then
      redis.call('HMSET', KEYS[queue + 2] .. ':' .. id,
        'attempts', '0', 'max_attempts', '25', 'status', 'Pending', 'idempotency_key', '')
      redis.call('ZADD', KEYS[queue + 3], ARGV[3], id)
    end
    -- The claim last: never a claim without its job.
    redis.call('SET', claim, '1', 'EX', ARGV[1])
    pushed[i] = 1
  end
end
return pushed
";

/// One event of a delivery: its claim key and its job.
pub struct Arrival {
    pub claim: String,
    pub job: InboundEventV1,
}

/// The script and the apalis keys of the two queues the ingress feeds.
pub struct Ingest {
    script: redis::Script,
    /// data hash, meta prefix, scheduled set: `inbound_event`'s, then `inbound_signal`'s.
    keys: [String; 6],
}

impl Default for Ingest {
    fn default() -> Self {
        Self::new()
    }
}

fn queue_keys(name: &str) -> [String; 3] {
    let c = Config::default().queue(name);
    [c.job_data_hash(), c.job_meta_hash(), c.scheduled_jobs_set()]
}

impl Ingest {
    pub fn new() -> Self {
        let [a, b, c] = queue_keys(InboundEventV1::NAME);
        let [d, e, f] = queue_keys(InboundSignalV1::NAME);
        Ingest {
            script: redis::Script::new(SCRIPT),
            keys: [a, b, c, d, e, f],
        }
    }

    /// Claims and enqueues `arrivals` (distinct claims) in one script call: a model-bound
    /// event's job goes to `inbound_event`, the rest to `inbound_signal`. `true` for each
    /// event that was new (its job written, then its claim); `false` for a duplicate (nothing
    /// written, or with `touch` its claim rewritten). Claims live `claim_ttl_secs`.
    pub async fn claim_and_push(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        arrivals: &[Arrival],
        claim_ttl_secs: u64,
        touch: bool,
    ) -> redis::RedisResult<Vec<bool>> {
        if arrivals.is_empty() {
            return Ok(Vec::new());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut call = self.script.prepare_invoke();
        for k in &self.keys {
            call.key(k);
        }
        for a in arrivals {
            call.key(&a.claim);
        }
        call.arg(claim_ttl_secs)
            .arg(if touch { "1" } else { "0" })
            .arg(now);
        for a in arrivals {
            let payload = serde_json::to_vec(&a.job).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "the job could not be encoded",
                    e.to_string(),
                ))
            })?;
            let queue = if a.job.kind.needs_model() { 0 } else { 3 };
            // A ULID, as apalis-redis names the jobs it pushes.
            call.arg(queue)
                .arg(ulid::Ulid::generate().to_string())
                .arg(payload);
        }
        let pushed: Vec<i64> = call.invoke_async(conn).await?;
        Ok(pushed.into_iter().map(|p| p == 1).collect())
    }
}
