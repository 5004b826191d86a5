//! `send_message`: one reply part through the Graph Send API, at most once (SPEC §5.3).
//!
//! The part's `outbound_messages` row is the record of truth. It is marked `sending` (one more
//! attempt) and committed before the call, `sent` with Meta's id after. A call whose outcome is
//! unknown (timed out after the request went out) is not repeated blindly: the job waits
//! `ECHO_CONFIRM_SECS` for the echo of our own message, which marks the row `sent`; without
//! one it sends once more, and a second unknown outcome ends as `send_unknown`. A row already
//! `sent` (a re-run, a replayed dead letter) sends nothing.

use chrono::Utc;
use diesel_async::AsyncPgConnection;
use igsales_jobs::{DeadReason, SendMessageV1};
use igsales_meta::ErrorClass;
use igsales_schema::accounts::{self, AccountError};
use igsales_schema::outbound;
use igsales_schema::{DbError, MerchantId};

use crate::runtime::Shared;
use crate::runtime::outcome::JobError;

pub const SENDS: &str = "igsales_graph_sends_total";

async fn set_status(
    shared: &Shared,
    merchant: MerchantId,
    key: &str,
    status: &'static str,
    error: Option<String>,
) -> Result<(), JobError> {
    let key = key.to_owned();
    shared
        .db
        .as_merchant(merchant, async move |c: &mut AsyncPgConnection| {
            Ok::<_, DbError>(outbound::mark_status(c, &key, status, error.as_deref()).await?)
        })
        .await?;
    Ok(())
}

pub async fn run(job: SendMessageV1, shared: &Shared) -> Result<(), JobError> {
    let merchant = MerchantId(job.merchant_id);
    let key = job.idempotency_key.clone();
    // One transaction reads the part, the part before it, and the account's token.
    let (k, page, vault) = (key.clone(), job.instagram_account_id.clone(), &shared.vault);
    let read = shared
        .db
        .as_merchant(merchant, async move |c: &mut AsyncPgConnection| {
            let Some(row) = outbound::get(c, &k).await? else {
                return Ok::<_, DbError>(None);
            };
            let previous = match k.rsplit_once('#') {
                Some((event, _)) if row.part_index > 0 => {
                    outbound::get(c, &outbound::part_key(event, (row.part_index - 1) as usize))
                        .await?
                        .map(|p| p.status)
                }
                _ => None,
            };
            let token = accounts::token(c, vault, merchant, &page).await;
            Ok(Some((row, previous, token)))
        })
        .await?;
    let Some((row, previous, token)) = read else {
        // The part is gone (data deletion): nothing to send.
        return Ok(());
    };
    match row.status.as_str() {
        "sent" => return Ok(()),
        // Never re-sent on our own: it may have reached the customer.
        "send_unknown" => return Ok(()),
        _ => {}
    }
    if Utc::now() > job.window_closes_at {
        set_status(
            shared,
            merchant,
            &key,
            "failed",
            Some("24-hour window closed".into()),
        )
        .await?;
        return Err(JobError::Dead(
            DeadReason::WindowExpired,
            anyhow::anyhow!("the 24-hour messaging window closed before the send"),
        ));
    }
    // Parts go out in order: a later part waits for the one before it.
    if previous.is_some_and(|status| matches!(status.as_str(), "pending" | "sending")) {
        return Err(JobError::Wait(
            std::time::Duration::from_millis(300),
            "waiting for the previous part",
        ));
    }
    let echo_wait = shared.settings.echo_confirm;
    if row.status == "sending" {
        let since = row
            .sending_started_at
            .map_or(echo_wait, |t| (Utc::now() - t).to_std().unwrap_or_default());
        if since < echo_wait {
            return Err(JobError::Wait(
                echo_wait - since,
                "send outcome unknown; waiting for the echo",
            ));
        }
        if row.send_attempts >= 2 {
            set_status(
                shared,
                merchant,
                &key,
                "send_unknown",
                Some("no echo after two unknown outcomes".into()),
            )
            .await?;
            return Err(JobError::Dead(
                DeadReason::SendUnknown,
                anyhow::anyhow!("two sends timed out and no echo confirmed either"),
            ));
        }
    }
    if let Some(wait) = shared
        .gate
        .admit(merchant, "messages")
        .await
        .map_err(JobError::retry)?
    {
        return Err(JobError::Wait(wait, "graph rate limit"));
    }

    let token = match token {
        Ok(t) => t,
        Err(AccountError::NotFound) => {
            set_status(
                shared,
                merchant,
                &key,
                "failed",
                Some("account disconnected".into()),
            )
            .await?;
            return Err(JobError::Dead(
                DeadReason::NeedsReauth,
                anyhow::anyhow!("the account is disconnected"),
            ));
        }
        Err(AccountError::Db(e)) => return Err(e.into()),
        Err(e) => return Err(JobError::permanent(e)),
    };
    let k = key.clone();
    let claimed = shared
        .db
        .as_merchant(merchant, async move |c: &mut AsyncPgConnection| {
            Ok::<_, DbError>(outbound::mark_sending(c, &k).await?)
        })
        .await?;
    if !claimed {
        // Confirmed by an echo meanwhile.
        return Ok(());
    }

    match shared
        .meta
        .send_text(&token, &job.recipient_igsid, &row.text)
        .await
    {
        Ok(message_id) => {
            let k = key.clone();
            shared
                .db
                .as_merchant(merchant, async move |c: &mut AsyncPgConnection| {
                    Ok::<_, DbError>(outbound::mark_sent(c, &k, &message_id).await?)
                })
                .await?;
            metrics::counter!(SENDS, "result" => "sent").increment(1);
            Ok(())
        }
        Err(e) => {
            let class = e.class();
            let error = e.to_string();
            let label = match class {
                ErrorClass::Throttled { .. } => "throttled",
                ErrorClass::Transient => "transient",
                ErrorClass::Unknown => "unknown",
                ErrorClass::Reauth => "reauth",
                ErrorClass::WindowExpired => "window_expired",
                ErrorClass::Permanent => "permanent",
            };
            metrics::counter!(SENDS, "result" => label).increment(1);
            match class {
                ErrorClass::Unknown => {
                    tracing::warn!(merchant.id = %merchant, part = %key, "send outcome unknown; waiting for the echo");
                    Err(JobError::Wait(
                        echo_wait,
                        "send outcome unknown; waiting for the echo",
                    ))
                }
                ErrorClass::Throttled { regain_after } => {
                    set_status(shared, merchant, &key, "pending", Some(error)).await?;
                    let wait = regain_after
                        .unwrap_or(shared.settings.graph_throttle_wait)
                        .min(shared.settings.graph_max_pause);
                    shared
                        .gate
                        .pause(merchant, wait)
                        .await
                        .map_err(JobError::retry)?;
                    Err(JobError::Wait(wait, "meta throttled the merchant"))
                }
                ErrorClass::Transient => {
                    set_status(shared, merchant, &key, "pending", Some(error)).await?;
                    Err(JobError::Retry(e.into()))
                }
                ErrorClass::Reauth => {
                    set_status(shared, merchant, &key, "failed", Some(error)).await?;
                    let page = job.instagram_account_id.clone();
                    shared
                        .db
                        .as_merchant(merchant, async move |c: &mut AsyncPgConnection| {
                            Ok::<_, DbError>(accounts::mark_needs_reauth(c, &page).await?)
                        })
                        .await?;
                    Err(JobError::Dead(DeadReason::NeedsReauth, e.into()))
                }
                ErrorClass::WindowExpired => {
                    set_status(shared, merchant, &key, "failed", Some(error)).await?;
                    Err(JobError::Dead(DeadReason::WindowExpired, e.into()))
                }
                ErrorClass::Permanent => {
                    set_status(shared, merchant, &key, "failed", Some(error)).await?;
                    Err(JobError::permanent(e))
                }
            }
        }
    }
}
