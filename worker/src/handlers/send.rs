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
        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
            Ok::<_, DbError>(outbound::mark_status(c, &key, status, error.as_deref()).await?)
        })
        .await?;
    Ok(())
}

/// What the part's row says to do, decided (and, for a send, claimed) in one transaction.
enum Decision {
    /// Nothing to do: sent already, confirmed, unknown (never re-sent), or gone.
    Done,
    Wait(std::time::Duration, &'static str),
    Dead(DeadReason, &'static str),
    Send(Box<(outbound::Outbound, igsales_config::Secret)>),
}

/// What the part's row says to do, read with the part before it and the token in one flight
/// (the token is read even when the part turns out to be done, which is rare). Every outcome
/// but a send is final here; a send is claimed by the caller.
async fn decide(
    c: &AsyncPgConnection,
    shared: &Shared,
    job: &SendMessageV1,
    merchant: MerchantId,
) -> Result<Decision, DbError> {
    let (k, page, vault) = (
        &job.idempotency_key,
        &job.instagram_account_id,
        &shared.vault,
    );
    let (echo_wait, window_closes_at) = (shared.settings.echo_confirm, job.window_closes_at);
    // The part, the part before it and the token in one round trip (pipelined; the
    // token is read even when the part turns out to be done, which is rare).
    let (parts, token) = futures::join!(
        outbound::with_previous(c, k),
        accounts::token(c, vault, merchant, page)
    );
    let (this, before) = parts?;
    let Some(row) = this else {
        // The part is gone (data deletion): nothing to send.
        return Ok(Decision::Done);
    };
    if matches!(row.status.as_str(), "sent" | "send_unknown") {
        return Ok(Decision::Done);
    }
    if Utc::now() > window_closes_at {
        outbound::mark_status(c, k, "failed", Some("24-hour window closed")).await?;
        return Ok(Decision::Dead(
            DeadReason::WindowExpired,
            "the 24-hour messaging window closed before the send",
        ));
    }
    // Parts go out in order: a later part waits for the one before it.
    if before.is_some_and(|b| matches!(b.status.as_str(), "pending" | "sending")) {
        return Ok(Decision::Wait(
            std::time::Duration::from_millis(300),
            "waiting for the previous part",
        ));
    }
    if row.status == "sending" {
        let since = row
            .sending_started_at
            .map_or(echo_wait, |t| (Utc::now() - t).to_std().unwrap_or_default());
        if since < echo_wait {
            return Ok(Decision::Wait(
                echo_wait - since,
                "send outcome unknown; waiting for the echo",
            ));
        }
        if row.send_attempts >= 2 {
            outbound::mark_status(
                c,
                k,
                "send_unknown",
                Some("no echo after two unknown outcomes"),
            )
            .await?;
            return Ok(Decision::Dead(
                DeadReason::SendUnknown,
                "two sends timed out and no echo confirmed either",
            ));
        }
    }
    let token = match token {
        Ok(t) => t,
        Err(AccountError::NotFound) => {
            outbound::mark_status(c, k, "failed", Some("account disconnected")).await?;
            return Ok(Decision::Dead(
                DeadReason::NeedsReauth,
                "the account is disconnected",
            ));
        }
        Err(AccountError::Db(e)) => return Err(e),
        Err(_) => {
            outbound::mark_status(c, k, "failed", Some("stored token unusable")).await?;
            return Ok(Decision::Dead(
                DeadReason::Permanent,
                "the stored token cannot be decrypted",
            ));
        }
    };
    Ok(Decision::Send(Box::new((row, token))))
}

pub async fn run(job: SendMessageV1, shared: &Shared) -> Result<(), JobError> {
    let merchant = MerchantId(job.merchant_id);
    let key = job.idempotency_key.clone();
    // Meta's limits first: a throttled merchant's parts wait without touching Postgres.
    if let Some(wait) = shared
        .gate
        .admit(merchant, "messages")
        .await
        .map_err(JobError::retry)?
    {
        return Err(JobError::Wait(wait, "graph rate limit"));
    }
    let echo_wait = shared.settings.echo_confirm;
    // One transaction decides and, for a send, claims it: `sending` and one more attempt are
    // committed before the call (the UPDATE and COMMIT in one flight).
    let decision = shared
        .db
        .as_merchant_committed(merchant, async |c: &AsyncPgConnection| {
            match decide(c, shared, &job, merchant).await? {
                Decision::Send(send) => {
                    let (status, attempts) = (send.0.status.clone(), send.0.send_attempts);
                    let (claimed, done) = futures::try_join!(
                        outbound::mark_sending(c, &job.idempotency_key, &status, attempts),
                        igsales_schema::commit(c),
                    )?;
                    Ok::<_, DbError>((
                        if claimed {
                            Decision::Send(send)
                        } else {
                            Decision::Done
                        },
                        done,
                    ))
                }
                other => Ok((other, igsales_schema::commit(c).await?)),
            }
        })
        .await?;
    let (row, token) = match decision {
        Decision::Done => return Ok(()),
        Decision::Wait(d, why) => return Err(JobError::Wait(d, why)),
        Decision::Dead(reason, why) => return Err(JobError::Dead(reason, anyhow::anyhow!(why))),
        Decision::Send(send) => *send,
    };

    match shared
        .meta
        .send_text(&token, &job.recipient_igsid, &row.text)
        .await
    {
        Ok(message_id) => {
            let k = key.clone();
            shared
                .db
                .as_merchant_committed(merchant, async move |c: &AsyncPgConnection| {
                    let ((), done) = futures::try_join!(
                        outbound::mark_sent(c, &k, &message_id),
                        igsales_schema::commit(c),
                    )?;
                    Ok::<_, DbError>(((), done))
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
                    // The part fails and the account needs its owner, in one transaction.
                    let page = &job.instagram_account_id;
                    shared
                        .db
                        .as_merchant(merchant, async |c: &AsyncPgConnection| {
                            futures::try_join!(
                                outbound::mark_status(c, &key, "failed", Some(&error)),
                                accounts::mark_needs_reauth(c, page),
                            )?;
                            Ok::<_, DbError>(())
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
