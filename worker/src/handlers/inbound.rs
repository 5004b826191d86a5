//! `inbound_event`: records the event under its merchant (the UNIQUE `(merchant_id, event_id)`
//! absorbs a duplicate the ingress's claim let through).

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use igsales_jobs::InboundEventV1;
use igsales_schema::events::{self, NewEvent};
use igsales_schema::{DbError, MerchantId};

use crate::runtime::Shared;
use crate::runtime::outcome::JobError;

/// The event's own time (`timestamp`, ms), which orders a conversation — not arrival.
fn event_time(job: &InboundEventV1) -> Option<DateTime<Utc>> {
    #[derive(serde::Deserialize)]
    struct Stamp {
        timestamp: Option<i64>,
    }
    let ms = serde_json::from_str::<Stamp>(job.event.get())
        .ok()
        .and_then(|s| s.timestamp)
        .or(job.entry_time_ms)?;
    DateTime::from_timestamp_millis(ms)
}

pub async fn run(job: InboundEventV1, shared: &Shared) -> Result<(), JobError> {
    let merchant = MerchantId(job.merchant_id);
    let when = event_time(&job);
    let recorded = shared
        .db
        .as_merchant(merchant, async |c: &mut AsyncPgConnection| {
            let fresh = events::record(
                c,
                merchant,
                &NewEvent {
                    event_id: &job.event_id,
                    kind: job.kind.as_str(),
                    instagram_page_id: &job.instagram_account_id,
                    event_time: when,
                    received_at: job.received_at,
                },
            )
            .await?;
            if fresh {
                events::mark_processed(c, &job.event_id).await?;
            }
            Ok::<_, DbError>(fresh)
        })
        .await?;
    if !recorded {
        tracing::debug!(merchant.id = %merchant, event.kind = job.kind.as_str(), "duplicate event absorbed");
    }
    Ok(())
}
