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
use igsales_jobs::{DeadReason, SendChannel, SendMessageV1};
use igsales_meta::send::OutgoingMessage;
use igsales_meta::{ErrorClass, Recipient};
use igsales_schema::accounts::{self, AccountError};
use igsales_schema::outbound::{self, Channel, OutboundStatus};
use igsales_schema::{DbError, MerchantId};

use crate::handlers::Shared;
use crate::runtime::outcome::JobError;
use crate::sales::graph::PRIVATE_REPLIES;

pub const SENDS: &str = "igsales_graph_sends_total";

async fn set_status(
    shared: &Shared,
    merchant: MerchantId,
    key: &str,
    status: OutboundStatus,
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

/// Ends the part as `failed` for `reason` after a Graph answer.
async fn end(
    shared: &Shared,
    merchant: MerchantId,
    key: &str,
    reason: DeadReason,
    error: &str,
) -> Result<(), JobError> {
    let (key, error) = (key.to_owned(), error.to_owned());
    shared
        .db
        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
            Ok::<_, DbError>(
                outbound::mark_dead(c, &key, OutboundStatus::Failed, reason.as_str(), &error)
                    .await?,
            )
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

/// Ends the part for good: the row records why, the job becomes a dead letter with that reason.
async fn die(
    c: &AsyncPgConnection,
    key: &str,
    status: OutboundStatus,
    reason: DeadReason,
    why: &'static str,
) -> Result<Decision, DbError> {
    outbound::mark_dead(c, key, status, reason.as_str(), why).await?;
    Ok(Decision::Dead(reason, why))
}

fn reason_of(part: &outbound::Outbound) -> DeadReason {
    match part.dead_reason() {
        Some("exhausted") => DeadReason::Exhausted,
        Some("window_expired") => DeadReason::WindowExpired,
        Some("needs_reauth") => DeadReason::NeedsReauth,
        Some("send_unknown") => DeadReason::SendUnknown,
        _ if part.status == OutboundStatus::SendUnknown => DeadReason::SendUnknown,
        _ => DeadReason::Permanent,
    }
}

/// How long a part waits for the one before it: half its own age, from 300 ms up to 30 s, so
/// a part that waits long polls ever more rarely (geometric) instead of every 300 ms.
pub fn wait_for_previous(age: std::time::Duration) -> std::time::Duration {
    (age / 2).clamp(
        std::time::Duration::from_millis(300),
        std::time::Duration::from_secs(30),
    )
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
    let (echo_wait, window_closes_at) = (
        shared.settings.conversation.echo_confirm,
        job.window_closes_at,
    );
    let (parts, token) = futures::join!(
        outbound::with_previous(c, k),
        accounts::usable_token(c, vault, merchant, page)
    );
    let (this, before) = parts?;
    let Some(row) = this else {
        // The part is gone (data deletion): nothing to send.
        return Ok(Decision::Done);
    };
    if matches!(
        row.status,
        OutboundStatus::Sent | OutboundStatus::SendUnknown
    ) {
        return Ok(Decision::Done);
    }
    if Utc::now() > window_closes_at {
        return die(
            c,
            k,
            OutboundStatus::Failed,
            DeadReason::WindowExpired,
            "the 24-hour messaging window closed before the send",
        )
        .await;
    }
    match &token {
        Err(AccountError::NotFound) => {
            return die(
                c,
                k,
                OutboundStatus::Failed,
                DeadReason::NeedsReauth,
                "the account is disconnected",
            )
            .await;
        }
        Err(AccountError::NeedsReauth) => {
            return die(
                c,
                k,
                OutboundStatus::Failed,
                DeadReason::NeedsReauth,
                "the account needs its owner to authorise it again",
            )
            .await;
        }
        _ => {}
    }
    // Parts go out in order: a later part waits for the one before it, and dies with it.
    if let Some(b) = &before {
        match b.status {
            OutboundStatus::Pending | OutboundStatus::Sending => {
                let age = (Utc::now() - row.created_at).to_std().unwrap_or_default();
                return Ok(Decision::Wait(
                    wait_for_previous(age),
                    "waiting for the previous part",
                ));
            }
            OutboundStatus::Failed | OutboundStatus::SendUnknown => {
                return die(
                    c,
                    k,
                    OutboundStatus::Failed,
                    reason_of(b),
                    "an earlier part of this reply could not be sent",
                )
                .await;
            }
            OutboundStatus::Sent => {}
        }
    }
    if row.status == OutboundStatus::Sending {
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
            return die(
                c,
                k,
                OutboundStatus::SendUnknown,
                DeadReason::SendUnknown,
                "two sends timed out and no echo confirmed either",
            )
            .await;
        }
    }
    let token = match token {
        Ok(t) => t,
        Err(AccountError::Db(e)) => return Err(e),
        Err(_) => {
            return die(
                c,
                k,
                OutboundStatus::Failed,
                DeadReason::Permanent,
                "the stored token cannot be decrypted",
            )
            .await;
        }
    };
    Ok(Decision::Send(Box::new((row, token))))
}

pub async fn run(job: SendMessageV1, shared: &Shared) -> Result<(), JobError> {
    let merchant = MerchantId(job.merchant_id);
    let key = job.idempotency_key.clone();
    // Meta's limits first: a throttled merchant's parts wait without touching Postgres. A
    // private reply is a Send API call with an hourly limit of its own besides, asked second:
    // a part that waits for the per-second window must not use up a slot of the hour.
    match job.channel {
        SendChannel::Dm => crate::handlers::graph_admit(shared, merchant, "messages").await?,
        SendChannel::PrivateReply => {
            crate::handlers::graph_admit(shared, merchant, "messages").await?;
            crate::handlers::graph_admit(shared, merchant, PRIVATE_REPLIES).await?;
        }
        SendChannel::PublicReply => {
            crate::handlers::graph_admit(shared, merchant, "comment_replies").await?;
        }
    }
    let echo_wait = shared.settings.conversation.echo_confirm;
    // One transaction decides and, for a send, claims it: `sending` and one more attempt are
    // committed before the call (the UPDATE and COMMIT in one flight).
    let decision = shared
        .db
        .as_merchant_committed(merchant, async |c: &AsyncPgConnection| {
            match decide(c, shared, &job, merchant).await? {
                Decision::Send(send) => {
                    let (status, attempts) = (send.0.status, send.0.send_attempts);
                    let (claimed, done) = futures::try_join!(
                        outbound::mark_sending(c, &job.idempotency_key, status, attempts),
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

    // A stored payload is the Send API message itself (cards, quick replies); the client checks
    // Meta's limits before the call.
    let message = match row
        .payload
        .clone()
        .map(serde_json::from_value::<OutgoingMessage>)
    {
        None => OutgoingMessage::text(row.text.clone()),
        Some(Ok(message)) => message,
        Some(Err(e)) => {
            let error = format!("the stored message cannot be read: {e}");
            end(shared, merchant, &key, DeadReason::Permanent, &error).await?;
            return Err(JobError::permanent(anyhow::anyhow!(error)));
        }
    };
    let comment = row.comment_id.as_deref().unwrap_or_default();
    let sent = match row.channel {
        Channel::Dm => {
            shared
                .meta
                .send_message(&token, &job.recipient_igsid, &message)
                .await
        }
        Channel::PrivateReply => {
            shared
                .meta
                .send_to(&token, Recipient::Comment(comment), &message)
                .await
        }
        Channel::PublicReply => shared.meta.reply_publicly(&token, comment, &row.text).await,
    };
    match sent {
        Ok(message_id) => {
            // Meta has the message: the mark is retried in place while Postgres is out of
            // reach (up to ECHO_CONFIRM_SECS; after that the echo confirms the send), since a
            // re-run would find the part `sending` and could send it again.
            let started = std::time::Instant::now();
            loop {
                let (k, id) = (key.clone(), message_id.clone());
                let marked = shared
                    .db
                    .as_merchant_committed(merchant, async move |c: &AsyncPgConnection| {
                        let ((), done) = futures::try_join!(
                            outbound::mark_sent(c, &k, &id),
                            igsales_schema::commit(c),
                        )?;
                        Ok::<_, DbError>(((), done))
                    })
                    .await;
                match marked {
                    Ok(()) => break,
                    Err(e) if e.is_unavailable() && started.elapsed() < echo_wait => {
                        tracing::warn!(merchant.id = %merchant, part = %key, error = %e, "sent, but Postgres is unavailable; marking again");
                        tokio::time::sleep(shared.settings.retry.unavailable_wait).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
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
                ErrorClass::AlreadyReplied => "already_replied",
                ErrorClass::Permanent => "permanent",
            };
            metrics::counter!(SENDS, "result" => label).increment(1);
            match class {
                // A public reply has no echo to confirm it: never posted twice.
                ErrorClass::Unknown if row.channel == Channel::PublicReply => {
                    let key = key.clone();
                    shared
                        .db
                        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
                            Ok::<_, DbError>(
                                outbound::mark_dead(
                                    c,
                                    &key,
                                    OutboundStatus::SendUnknown,
                                    DeadReason::SendUnknown.as_str(),
                                    "the public reply's outcome is unknown",
                                )
                                .await?,
                            )
                        })
                        .await?;
                    Err(JobError::Dead(DeadReason::SendUnknown, e.into()))
                }
                // After a send whose outcome was unknown, Meta refusing a second private reply
                // says the first went out. On a first try, someone replied by hand.
                ErrorClass::AlreadyReplied if row.send_attempts >= 1 => {
                    let key = key.clone();
                    shared
                        .db
                        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
                            Ok::<_, DbError>(
                                outbound::mark_status(c, &key, OutboundStatus::Sent, None).await?,
                            )
                        })
                        .await?;
                    Ok(())
                }
                ErrorClass::AlreadyReplied => {
                    end(shared, merchant, &key, DeadReason::Permanent, &error).await?;
                    Err(JobError::permanent(e))
                }
                ErrorClass::Unknown => {
                    tracing::warn!(merchant.id = %merchant, part = %key, "send outcome unknown; waiting for the echo");
                    Err(JobError::Wait(
                        echo_wait,
                        "send outcome unknown; waiting for the echo",
                    ))
                }
                ErrorClass::Throttled {
                    regain_after,
                    scope,
                } => {
                    set_status(shared, merchant, &key, OutboundStatus::Pending, Some(error))
                        .await?;
                    let wait = shared
                        .gate
                        .throttled(merchant, regain_after, scope)
                        .await
                        .map_err(JobError::redis)?;
                    Err(JobError::Wait(wait, "meta throttled the merchant"))
                }
                ErrorClass::Transient => {
                    // Out of attempts: the part dies here, so the parts after it die too
                    // instead of waiting for it.
                    if job.delivery.attempt + 1 >= shared.settings.retry.send_message() {
                        end(shared, merchant, &key, DeadReason::Exhausted, &error).await?;
                        return Err(JobError::Dead(DeadReason::Exhausted, e.into()));
                    }
                    set_status(shared, merchant, &key, OutboundStatus::Pending, Some(error))
                        .await?;
                    Err(JobError::Retry(e.into()))
                }
                ErrorClass::Reauth => {
                    // The part fails and the account needs its owner, in one transaction.
                    let page = &job.instagram_account_id;
                    shared
                        .db
                        .as_merchant(merchant, async |c: &AsyncPgConnection| {
                            futures::try_join!(
                                outbound::mark_dead(
                                    c,
                                    &key,
                                    OutboundStatus::Failed,
                                    DeadReason::NeedsReauth.as_str(),
                                    &error
                                ),
                                accounts::mark_needs_reauth(c, page),
                            )?;
                            Ok::<_, DbError>(())
                        })
                        .await?;
                    Err(JobError::Dead(DeadReason::NeedsReauth, e.into()))
                }
                ErrorClass::WindowExpired => {
                    end(shared, merchant, &key, DeadReason::WindowExpired, &error).await?;
                    Err(JobError::Dead(DeadReason::WindowExpired, e.into()))
                }
                ErrorClass::Permanent => {
                    end(shared, merchant, &key, DeadReason::Permanent, &error).await?;
                    Err(JobError::permanent(e))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::wait_for_previous;

    #[test]
    fn waiting_for_the_previous_part_backs_off_with_the_parts_age() {
        assert_eq!(
            wait_for_previous(Duration::ZERO),
            Duration::from_millis(300)
        );
        assert_eq!(
            wait_for_previous(Duration::from_secs(4)),
            Duration::from_secs(2)
        );
        assert_eq!(
            wait_for_previous(Duration::from_secs(3600)),
            Duration::from_secs(30)
        );
        // Each wait is half the age so far: the age grows by half each time, the polls thin out.
        let (mut age, mut polls) = (Duration::ZERO, 0);
        while age < Duration::from_secs(24 * 3600) {
            age += wait_for_previous(age);
            polls += 1;
        }
        assert!(
            polls < 3_000,
            "{polls} polls in 24 h (every 300 ms: 288,000)"
        );
    }
}
