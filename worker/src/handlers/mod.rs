//! Job bodies. Each is idempotent (delivery is at least once) and says how.

pub mod canary;
pub mod housekeeping;
pub mod inbound;
pub mod send;
pub mod settings;
pub mod tokens;

use igsales_meta::{ErrorClass, MetaError};
use igsales_schema::DbError;

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

/// A failed Graph call, classified (SPEC §5.3).
pub fn meta_error(e: MetaError) -> JobError {
    match e.class() {
        ErrorClass::Throttled { regain_after } => JobError::Wait(
            regain_after.unwrap_or(std::time::Duration::from_secs(60)),
            "meta throttled",
        ),
        ErrorClass::Transient | ErrorClass::Unknown => JobError::Retry(e.into()),
        ErrorClass::Reauth => JobError::Dead(igsales_jobs::DeadReason::NeedsReauth, e.into()),
        ErrorClass::WindowExpired => {
            JobError::Dead(igsales_jobs::DeadReason::WindowExpired, e.into())
        }
        ErrorClass::Permanent => JobError::permanent(e),
    }
}
