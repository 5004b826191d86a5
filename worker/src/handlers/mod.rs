//! Job bodies. Each is idempotent (delivery is at least once) and says how.

pub mod canary;
pub mod housekeeping;
pub mod inbound;
pub mod send;
pub mod settings;
pub mod tokens;

use igsales_meta::{ErrorClass, MetaError};
use igsales_schema::{DbError, MerchantId};

use crate::runtime::Shared;

use crate::runtime::outcome::JobError;

/// Postgres out of reach waits without using attempts; any other database error is a retry.
impl From<DbError> for JobError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            JobError::Unavailable(e.into())
        } else {
            JobError::Retry(e.into())
        }
    }
}

/// What a failed Graph call means for its job (SPEC §5.3), for every caller but the Send API
/// (whose unknown outcomes and per-part states need more): a throttled merchant is paused in
/// every replica, exactly as sends are.
pub async fn graph_failed(shared: &Shared, merchant: MerchantId, e: MetaError) -> JobError {
    match e.class() {
        ErrorClass::Throttled { regain_after } => {
            match shared.gate.throttled(merchant, regain_after).await {
                Ok(wait) => JobError::Wait(wait, "meta throttled the merchant"),
                Err(redis) => JobError::redis(redis),
            }
        }
        ErrorClass::Transient | ErrorClass::Unknown => JobError::Retry(e.into()),
        ErrorClass::Reauth => JobError::Dead(igsales_jobs::DeadReason::NeedsReauth, e.into()),
        ErrorClass::WindowExpired => {
            JobError::Dead(igsales_jobs::DeadReason::WindowExpired, e.into())
        }
        ErrorClass::Permanent => JobError::permanent(e),
    }
}

/// Meta's limits before a Graph call: a paused merchant or a full window waits.
pub async fn graph_admit(
    shared: &Shared,
    merchant: MerchantId,
    endpoint: &str,
) -> Result<(), JobError> {
    match shared
        .gate
        .admit(merchant, endpoint)
        .await
        .map_err(JobError::redis)?
    {
        Some(wait) => Err(JobError::Wait(wait, "graph rate limit")),
        None => Ok(()),
    }
}
