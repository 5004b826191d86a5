//! Daily housekeeping: retention of webhook events and finished-job data, capped DLQ lists.

use chrono::Utc;
use diesel_async::AsyncPgConnection;
use igsales_jobs::{HousekeepingV1, cap_dead_letters};
use igsales_schema::{DbError, events};

use crate::handlers::Shared;
use crate::runtime::outcome::JobError;

/// For ids of a done/dead set: forget those finished before the cutoff (their data, their meta
/// and their set entry). KEYS: the set, the data hash, the meta prefix. ARGV: cutoff (s), ids…
const FORGET_FINISHED: &str = r"
local removed = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local meta = KEYS[3] .. ':' .. id
  local done_at = tonumber(redis.call('HGET', meta, 'done_at') or '0')
  if done_at == nil or done_at < tonumber(ARGV[1]) then
    redis.call('SREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('DEL', meta)
    removed = removed + 1
  end
end
return removed
";

pub async fn run(job: HousekeepingV1, shared: &Shared) -> Result<(), JobError> {
    let retention = chrono::Duration::from_std(shared.settings.retention.retention)
        .map_err(JobError::permanent)?;
    let cutoff = Utc::now() - retention;

    let mut events_deleted = 0;
    for merchant in shared.db.merchant_ids().await? {
        events_deleted += shared
            .db
            .as_merchant(merchant, async |c: &AsyncPgConnection| {
                Ok::<_, DbError>(events::delete_received_before(c, cutoff).await?)
            })
            .await?;
    }

    let mut redis = shared.redis.clone();
    let script = redis::Script::new(FORGET_FINISHED);
    let mut jobs_forgotten = 0u64;
    for queue in igsales_jobs::QUEUES {
        let cfg = apalis_redis::Config::default().queue(queue);
        for set in [cfg.done_jobs_set(), cfg.dead_jobs_set()] {
            let mut cursor = 0u64;
            loop {
                let (next, ids): (u64, Vec<String>) = redis::cmd("SSCAN")
                    .arg(&set)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut redis)
                    .await
                    .map_err(JobError::retry)?;
                if !ids.is_empty() {
                    let mut inv = script.key(&set);
                    inv.key(cfg.job_data_hash())
                        .key(cfg.job_meta_hash())
                        .arg(cutoff.timestamp());
                    for id in &ids {
                        inv.arg(id);
                    }
                    let n: u64 = inv
                        .invoke_async(&mut redis)
                        .await
                        .map_err(JobError::retry)?;
                    jobs_forgotten += n;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
    }

    let mut pipe = redis::pipe();
    for list in igsales_jobs::DEAD_LETTER_NAMES {
        cap_dead_letters(&mut pipe, list, shared.settings.retry.dlq_max_len);
    }
    let () = pipe
        .query_async(&mut redis)
        .await
        .map_err(JobError::retry)?;
    tracing::info!(
        cron.tick = job.tick,
        events_deleted,
        jobs_forgotten,
        "housekeeping done"
    );
    Ok(())
}
