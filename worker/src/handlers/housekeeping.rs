//! Daily housekeeping: retention of webhook events, of dead letters, and capped DLQ lists.
//! (Finished jobs' data does not wait for it: the runtime sweeps that within minutes.)
//!
//! Resumable by construction: events go in batches, each its own transaction, so a run cut
//! short (a timeout, a deploy, Postgres failing over) keeps what it deleted, and the retry
//! starts on what is left instead of from scratch.

use chrono::Utc;
use diesel_async::AsyncPgConnection;
use igsales_jobs::{HousekeepingV1, cap_dead_letters};
use igsales_schema::{DbError, events};

use crate::handlers::Shared;
use crate::runtime::outcome::JobError;

pub async fn run(job: HousekeepingV1, shared: &Shared) -> Result<(), JobError> {
    let retention = &shared.settings.retention;
    let now = Utc::now();
    let cutoff =
        now - chrono::Duration::from_std(retention.retention).map_err(JobError::permanent)?;
    let batch = retention.batch;

    let mut events_deleted = 0;
    for merchant in shared.db.merchant_ids().await? {
        loop {
            let n = shared
                .db
                .as_merchant(merchant, async |c: &AsyncPgConnection| {
                    Ok::<_, DbError>(
                        events::delete_received_before(c, merchant, cutoff, batch).await?,
                    )
                })
                .await?;
            events_deleted += n;
            if (n as i64) < batch {
                break;
            }
        }
    }

    let mut redis = shared.redis.clone();
    let dlq_cutoff =
        now - chrono::Duration::from_std(retention.dlq_retention).map_err(JobError::permanent)?;
    let dead_letters_dropped =
        igsales_jobs::forget::drop_dead_letters_before(&mut redis, dlq_cutoff)
            .await
            .map_err(JobError::redis)?;
    let mut pipe = redis::pipe();
    for list in igsales_jobs::DEAD_LETTER_NAMES {
        cap_dead_letters(&mut pipe, list, shared.settings.retry.dlq_max_len);
    }
    let () = pipe
        .query_async(&mut redis)
        .await
        .map_err(JobError::redis)?;
    tracing::info!(
        cron.tick = job.tick,
        events_deleted,
        dead_letters_dropped,
        "housekeeping done"
    );
    Ok(())
}
