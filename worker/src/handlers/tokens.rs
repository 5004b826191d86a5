//! Token renewal: the sweep finds accounts due, `refresh_token` renews one.

use chrono::Utc;
use diesel_async::AsyncPgConnection;
use igsales_jobs::queue::EnqueueError;
use igsales_jobs::{DeadReason, JobQueue, RefreshTokenV1, TokenRefreshSweepV1};
use igsales_schema::accounts::{self, AccountError};
use igsales_schema::{Db, DbError, MerchantId};

use crate::handlers::Shared;
use crate::handlers::{graph_admit, graph_failed};
use crate::runtime::outcome::JobError;

pub const REFRESH_RESULTS: &str = "igsales_token_refresh_total";

/// Meta refreshes only tokens at least 24 hours old.
const MIN_TOKEN_AGE: chrono::Duration = chrono::Duration::hours(24);

/// Accounts at least a day old whose token expires within `window`.
pub async fn due_accounts(
    db: &Db,
    window: chrono::Duration,
) -> Result<Vec<(MerchantId, String)>, DbError> {
    let now = Utc::now();
    db.accounts_due_for_token_refresh(now + window, now - MIN_TOKEN_AGE)
        .await
}

/// One `refresh_token` job per account, pushed at once; how many.
pub async fn enqueue_refreshes(
    redis: igsales_jobs::RedisConn,
    accounts: &[(MerchantId, String)],
) -> Result<usize, EnqueueError> {
    let jobs: Vec<RefreshTokenV1> = accounts
        .iter()
        .map(|(merchant, account)| RefreshTokenV1 {
            merchant_id: merchant.0,
            instagram_account_id: account.clone(),
            delivery: Default::default(),
        })
        .collect();
    let n = jobs.len();
    JobQueue::<RefreshTokenV1>::new(redis)
        .push_all(jobs)
        .await?;
    Ok(n)
}

/// Enqueues `refresh_token` for every account due. Running it twice enqueues twice; the second
/// refresh of an account then finds it fresh and is a no-op at Meta's side (and refreshing is
/// harmless).
pub async fn sweep(job: TokenRefreshSweepV1, shared: &Shared) -> Result<(), JobError> {
    let window = chrono::Duration::from_std(shared.settings.token_refresh.window)
        .map_err(JobError::permanent)?;
    let due = due_accounts(&shared.db, window).await?;
    let n = enqueue_refreshes(shared.redis.clone(), &due)
        .await
        .map_err(JobError::retry)?;
    tracing::info!(
        cron.tick = job.tick,
        accounts = n,
        "token refresh sweep enqueued refreshes"
    );
    Ok(())
}

pub async fn refresh(job: RefreshTokenV1, shared: &Shared) -> Result<(), JobError> {
    let merchant = MerchantId(job.merchant_id);
    let page = job.instagram_account_id.clone();
    let vault = &shared.vault;
    let token = match shared
        .db
        .as_merchant(merchant, async |c: &AsyncPgConnection| {
            accounts::token(c, vault, merchant, &page).await
        })
        .await
    {
        Ok(t) => t,
        // Disconnected since the sweep: nothing to renew.
        Err(AccountError::NotFound) => return Ok(()),
        Err(AccountError::Db(e)) => return Err(e.into()),
        Err(e) => return Err(JobError::permanent(e)),
    };
    graph_admit(shared, merchant, "refresh_access_token").await?;
    let renewed = match shared.meta.refresh_token(&token).await {
        Ok(t) => t,
        Err(e) => {
            let err = graph_failed(shared, merchant, e).await;
            if let JobError::Dead(DeadReason::NeedsReauth, _) = &err {
                shared
                    .db
                    .as_merchant(merchant, async |c: &AsyncPgConnection| {
                        Ok::<_, DbError>(accounts::mark_needs_reauth(c, &page).await?)
                    })
                    .await?;
                tracing::warn!(merchant.id = %merchant, instagram.account_id = %page, "token rejected: account needs re-authorisation");
            }
            metrics::counter!(REFRESH_RESULTS, "result" => "failed").increment(1);
            return Err(err);
        }
    };
    let expires_at = Utc::now()
        + chrono::Duration::from_std(renewed.expires_in).unwrap_or(chrono::Duration::days(60));
    let stored = shared
        .db
        .as_merchant(merchant, async |c: &AsyncPgConnection| {
            accounts::store_refreshed(c, vault, merchant, &page, &renewed.access_token, expires_at)
                .await
        })
        .await
        .map_err(|e| match e {
            AccountError::Db(e) => JobError::from(e),
            other => JobError::permanent(other),
        })?;
    metrics::counter!(REFRESH_RESULTS, "result" => if stored { "refreshed" } else { "disconnected" })
        .increment(1);
    tracing::info!(merchant.id = %merchant, instagram.account_id = %page, "token refreshed");
    Ok(())
}
