//! `inbound_event`: record the event, update the conversation, and answer when it is ours to
//! answer (SPEC §5.1–5.3).
//!
//! A customer's message costs one read-only transaction (the event's state, the conversation,
//! the shop, the catalog and the history, read in one flight) and, after the model answered,
//! one write transaction: the conversation's clock, the message, the reply parts and the event
//! record (UNIQUE `(merchant_id, event_id)`, marked processed) commit together. The sends are
//! enqueued after the commit. A re-run of a processed event enqueues again only the parts that
//! never started (a push that failed after the commit); the parts' own status makes a
//! duplicate send job harmless. Other kinds (which the ingress puts on `inbound_signal`, away
//! from the model's backlog) record the event and act in one transaction.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use diesel_async::AsyncPgConnection;
use igsales_jobs::{DeadReason, InboundEventV1, JobQueue, SendMessageV1};
use igsales_meta::IdString;
use igsales_meta::webhook::EventKind;
use igsales_schema::conversations::{self, Author, Conversation, Direction, NewMessage};
use igsales_schema::events::{self, NewEvent};
use igsales_schema::merchants::{self, Merchant};
use igsales_schema::outbound::{self, Outbound, OutboundStatus};
use igsales_schema::{DbError, MerchantId, accounts, products};
use serde::Deserialize;

use crate::reply::{self, HANDOFF_MARKER};
use crate::runtime::Shared;
use crate::runtime::outcome::JobError;

pub const REPLIES: &str = "igsales_replies_total";
/// Meta's messaging window after the customer's last message.
const WINDOW: ChronoDuration = ChronoDuration::hours(24);
const HISTORY: i64 = 12;

#[derive(Deserialize)]
struct Party {
    id: IdString,
}

#[derive(Deserialize, Default)]
struct Message {
    #[serde(default)]
    mid: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    attachments: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Postback {
    #[serde(default)]
    mid: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    payload: Option<String>,
}

#[derive(Deserialize)]
struct Edit {
    mid: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    num_edit: Option<i32>,
}

/// The parts of a messaging event this handler reads.
#[derive(Deserialize)]
struct Event {
    #[serde(default)]
    sender: Option<Party>,
    #[serde(default)]
    recipient: Option<Party>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    postback: Option<Postback>,
    #[serde(default)]
    message_edit: Option<Edit>,
}

fn when(job: &InboundEventV1, ev: &Event) -> DateTime<Utc> {
    ev.timestamp
        .or(job.entry_time_ms)
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(job.received_at)
}

/// Extends the lease while it is still ours (a compare on the run's token).
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";
/// Frees the lease if it is still ours.
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// Two runs of one event at once (a duplicate delivery raced the first) would both ask the
/// model: a short lease in Redis makes the second wait and then find the event processed. The
/// lease is short and renewed while its run lives, so a run killed with its process holds the
/// event back for one lease period, not for a whole job timeout.
pub async fn run(job: InboundEventV1, shared: &Shared) -> Result<(), JobError> {
    let lease = format!("lease:inbound_event:{}:{}", job.merchant_id, job.event_id);
    let mut redis = shared.redis.clone();
    let ttl = (shared.settings.orphan_timeout / 3).max(std::time::Duration::from_secs(1));
    let ttl_ms = ttl.as_millis() as u64;
    let token = uuid::Uuid::new_v4().to_string();
    let won: Option<String> = redis::cmd("SET")
        .arg(&lease)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(ttl_ms)
        .query_async(&mut redis)
        .await
        .map_err(JobError::redis)?;
    if won.is_none() {
        return Err(JobError::Wait(
            std::time::Duration::from_millis(500),
            "event is being handled by another run",
        ));
    }
    let renew = async {
        let script = redis::Script::new(RENEW);
        let mut conn = shared.redis.clone();
        loop {
            tokio::time::sleep(ttl / 3).await;
            let _: redis::RedisResult<i64> = script
                .key(&lease)
                .arg(&token)
                .arg(ttl_ms)
                .invoke_async(&mut conn)
                .await;
        }
    };
    let result = tokio::select! {
        r = handle(job, shared) => r,
        () = renew => unreachable!("the renewal loop never ends"),
    };
    let _: redis::RedisResult<i64> = redis::Script::new(RELEASE)
        .key(&lease)
        .arg(&token)
        .invoke_async(&mut redis)
        .await;
    result
}

async fn handle(job: InboundEventV1, shared: &Shared) -> Result<(), JobError> {
    let merchant = MerchantId(job.merchant_id);
    let ev: Event = serde_json::from_str(job.event.get())
        .map_err(|e| JobError::permanent(anyhow::anyhow!("unreadable event: {e}")))?;
    let at = when(&job, &ev);
    let now = Utc::now();
    let ctx = Ctx {
        job: &job,
        ev: &ev,
        merchant,
        at,
        now,
    };
    if job.kind.needs_model() {
        return on_message(shared, &ctx).await;
    }
    let takeover = ChronoDuration::from_std(shared.settings.human_takeover)
        .unwrap_or(ChronoDuration::hours(12));
    shared
        .db
        .as_merchant(merchant, async |c: &AsyncPgConnection| {
            if on_other(c, &ctx, job.kind, now + takeover).await? {
                events::mark_processed(c, &job.event_id).await?;
            }
            Ok::<_, DbError>(())
        })
        .await?;
    Ok(())
}

/// What every branch reads.
struct Ctx<'a> {
    job: &'a InboundEventV1,
    ev: &'a Event,
    merchant: MerchantId,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
}

impl Ctx<'_> {
    fn new_event(&self) -> NewEvent<'_> {
        NewEvent {
            event_id: &self.job.event_id,
            kind: self.job.kind.as_str(),
            instagram_page_id: &self.job.instagram_account_id,
            event_time: Some(self.at),
            received_at: self.job.received_at,
        }
    }

    fn account(&self) -> &str {
        &self.job.instagram_account_id
    }
}

/// The customer's message (or postback) as stored.
struct Incoming {
    customer: String,
    mid: String,
    text: Option<String>,
    attachments: serde_json::Value,
}

fn incoming(ctx: &Ctx<'_>) -> Option<Incoming> {
    let (job, ev) = (ctx.job, ctx.ev);
    let customer = ev
        .sender
        .as_ref()
        .map(|p| p.id.0.clone())
        .filter(|c| c != ctx.account())?;
    let (mid, text, attachments) = match (&ev.message, &ev.postback) {
        (Some(m), _) => (m.mid.clone(), m.text.clone(), m.attachments.clone()),
        (None, Some(p)) => (
            p.mid.clone(),
            p.title.clone().or_else(|| p.payload.clone()),
            None,
        ),
        (None, None) => return None,
    };
    Some(Incoming {
        customer,
        mid: mid.unwrap_or_else(|| job.event_id.clone()),
        text,
        attachments: attachments.unwrap_or_else(|| serde_json::json!([])),
    })
}

/// Everything the decision needs, read in one read-only transaction.
struct Seen {
    /// `None`: a new event; `Some(processed)`: recorded by an earlier run.
    state: Option<bool>,
    conversation: Option<Conversation>,
    shop: Option<Merchant>,
    products: Vec<products::Product>,
    history: Vec<(Author, String)>,
    /// Parts an earlier run stored.
    parts: Vec<Outbound>,
    /// Meta rejected the account's token: no model call, no send, until its owner reconnects.
    needs_reauth: bool,
}

/// What the write transaction stores besides the message.
enum Reply<'a> {
    Nothing,
    /// The model call failed: the event is recorded but left unprocessed, so a retry (or a
    /// replay of the dead letter) still answers it.
    Unanswered,
    Parts(&'a [String]),
    /// Flag the conversation for a person; the hand-off message goes out only if this run
    /// flipped the flag.
    Handoff(&'a str),
}

async fn on_message(shared: &Shared, ctx: &Ctx<'_>) -> Result<(), JobError> {
    let (job, merchant, at) = (ctx.job, ctx.merchant, ctx.at);
    let Some(msg) = incoming(ctx) else {
        shared
            .db
            .as_merchant(merchant, async |c: &AsyncPgConnection| {
                events::record_processed(c, merchant, &ctx.new_event()).await?;
                Ok::<_, DbError>(())
            })
            .await?;
        return Ok(());
    };
    let text = msg.text.clone().unwrap_or_default();
    let words = reply::search_words(&text);
    let account = ctx.account();
    // Everything in one flight, COMMIT included: the parts of an earlier run and the relevant
    // products are read whether or not they turn out to be needed (both are cheap index or
    // small-catalog reads), so nothing waits on a first answer.
    let seen = shared
        .db
        .as_merchant_committed(merchant, async |c: &AsyncPgConnection| {
            let (state, conversation, shop, first, relevant, recent, parts, reauth, done) = futures::try_join!(
                events::state(c, &job.event_id),
                conversations::find(c, account, &msg.customer),
                merchants::find(c, merchant),
                products::list_first(c, reply::SMALL_CATALOG + 1),
                products::search(c, &words, reply::RELEVANT_PRODUCTS),
                conversations::recent_messages_with(c, account, &msg.customer, HISTORY + 1),
                outbound::for_event(c, &job.event_id),
                accounts::needs_reauth(c, account),
                igsales_schema::commit(c),
            )?;
            // A small catalog goes in whole; a large one by relevance.
            let products = if first.len() as i64 > reply::SMALL_CATALOG {
                relevant
            } else {
                first
            };
            let history = recent
                .into_iter()
                .filter(|(_, _, sent)| *sent < at)
                .map(|(a, t, _)| (a, t))
                .collect();
            let seen = Seen {
                state,
                conversation,
                shop,
                products,
                history,
                parts,
                needs_reauth: reauth == Some(true),
            };
            Ok::<_, DbError>((seen, done))
        })
        .await?;

    if seen.state == Some(true) {
        // Handled before, but its sends may not have reached the queue (the push failed after
        // the commit): parts that never started go again.
        let pending = seen
            .parts
            .into_iter()
            .filter(|p| p.status == OutboundStatus::Pending)
            .collect();
        return push_sends(shared, ctx, &msg.customer, pending).await;
    }
    let Some(shop) = seen.shop else {
        store(shared, ctx, &msg, Reply::Nothing).await?;
        return Ok(());
    };
    if reply::asks_for_human(&text) {
        return handoff(shared, ctx, &msg, &shop.handoff_message).await;
    }
    let conv = seen.conversation.as_ref();
    let quiet = !shop.ai_enabled
        || conv.is_some_and(|c| c.needs_human || c.paused_until.is_some_and(|p| p > ctx.now))
        || text.trim().is_empty();
    // A newer message was stored before: that one gets the answer.
    let superseded =
        conv.is_some_and(|c| c.last_customer_message_at.is_some_and(|latest| latest > at));
    let expired = ctx.now - at > WINDOW;
    if quiet || expired || superseded {
        store(shared, ctx, &msg, Reply::Nothing).await?;
        if !quiet && expired {
            metrics::counter!(REPLIES, "result" => "window_expired").increment(1);
            return Err(JobError::Dead(
                DeadReason::WindowExpired,
                anyhow::anyhow!("the customer's message is older than the 24-hour window"),
            ));
        }
        return Ok(());
    }
    if !seen.parts.is_empty() {
        // An earlier run stored the answer but did not finish: the model is not asked again.
        store(shared, ctx, &msg, Reply::Nothing).await?;
        return push_sends(shared, ctx, &msg.customer, seen.parts).await;
    }

    if seen.needs_reauth {
        // Kept unprocessed and dead-lettered, so a replay after the owner reconnects (and
        // within the window) still answers it; the model is not paid for a reply that cannot go.
        store(shared, ctx, &msg, Reply::Unanswered).await?;
        metrics::counter!(REPLIES, "result" => "needs_reauth").increment(1);
        return Err(JobError::Dead(
            DeadReason::NeedsReauth,
            anyhow::anyhow!("the account needs its owner to authorise it again"),
        ));
    }
    // A run after a failed one may find the model's answer kept from it (the store failed).
    let kept = if job.delivery.is_fresh() {
        None
    } else {
        kept_answer(shared, ctx).await
    };
    let from_kept = kept.is_some();
    let messages = reply::prompt(&shop.persona, &seen.products, &seen.history, &text);
    let answer = match kept {
        Some(answer) => Ok(answer),
        None => shared.llm.complete(messages).await,
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            // The customer's message is kept even if no answer ever comes (the job may end as a
            // dead letter); the event stays unprocessed, so a retry still answers it.
            store(shared, ctx, &msg, Reply::Unanswered).await?;
            return Err(e.into_job_error());
        }
    };
    if answer.contains(HANDOFF_MARKER) {
        return handoff(shared, ctx, &msg, &shop.handoff_message).await;
    }
    let parts = reply::split(&answer);
    if parts.is_empty() {
        metrics::counter!(REPLIES, "result" => "empty").increment(1);
        store(shared, ctx, &msg, Reply::Nothing).await?;
        return Ok(());
    }
    metrics::counter!(REPLIES, "result" => "answered").increment(1);
    let rows = match store(shared, ctx, &msg, Reply::Parts(&parts)).await {
        Ok(rows) => rows,
        Err(e) => {
            // Paid for: keep the answer until it is stored, so the next run does not buy it
            // again (best effort: without Redis the next run asks the model once more).
            if !from_kept {
                keep_answer(shared, ctx, &answer).await;
            }
            return Err(e);
        }
    };
    if from_kept {
        forget_answer(shared, ctx).await;
    }
    push_sends(shared, ctx, &msg.customer, rows).await
}

/// Where a model answer waits for its store: `kept_answer:{merchant}:{sha256(event_id)[..32]}`.
fn kept_key(ctx: &Ctx<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, ctx.job.event_id.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("kept_answer:{}:{hex}", ctx.merchant)
}

/// Kept as long as the event could still be answered (the 24-hour window).
const KEPT_ANSWER_SECS: u64 = 24 * 3600;

async fn keep_answer(shared: &Shared, ctx: &Ctx<'_>, answer: &str) {
    let mut redis = shared.redis.clone();
    let kept: redis::RedisResult<()> = redis::cmd("SET")
        .arg(kept_key(ctx))
        .arg(answer)
        .arg("EX")
        .arg(KEPT_ANSWER_SECS)
        .query_async(&mut redis)
        .await;
    if let Err(e) = kept {
        tracing::warn!(merchant.id = %ctx.merchant, error = %e, "could not keep the model's answer for the next run");
    }
}

async fn kept_answer(shared: &Shared, ctx: &Ctx<'_>) -> Option<String> {
    let mut redis = shared.redis.clone();
    redis::cmd("GET")
        .arg(kept_key(ctx))
        .query_async::<Option<String>>(&mut redis)
        .await
        .ok()
        .flatten()
}

async fn forget_answer(shared: &Shared, ctx: &Ctx<'_>) {
    let mut redis = shared.redis.clone();
    let _: redis::RedisResult<()> = redis::cmd("DEL")
        .arg(kept_key(ctx))
        .query_async(&mut redis)
        .await;
}

/// The customer asked for a person (or the model handed over): flag the conversation and send
/// the shop's hand-off message, once.
async fn handoff(
    shared: &Shared,
    ctx: &Ctx<'_>,
    msg: &Incoming,
    handoff_message: &str,
) -> Result<(), JobError> {
    let rows = store(shared, ctx, msg, Reply::Handoff(handoff_message)).await?;
    if rows.is_empty() {
        return Ok(());
    }
    metrics::counter!(REPLIES, "result" => "handoff").increment(1);
    push_sends(shared, ctx, &msg.customer, rows).await
}

/// The customer's message as a `messages` row of `conversation`.
fn incoming_row<'a>(ctx: &Ctx<'_>, msg: &'a Incoming, conversation: uuid::Uuid) -> NewMessage<'a> {
    NewMessage {
        conversation,
        mid: &msg.mid,
        direction: Direction::Inbound,
        author: Author::Customer,
        text: msg.text.as_deref(),
        attachments: msg.attachments.clone(),
        sent_at: ctx.at,
    }
}

/// The one write transaction of a customer's message: the conversation (and its clock), then
/// the message, the reply parts and the event record (processed unless `Unanswered`) in one
/// flight.
async fn store(
    shared: &Shared,
    ctx: &Ctx<'_>,
    msg: &Incoming,
    reply: Reply<'_>,
) -> Result<Vec<Outbound>, JobError> {
    let (merchant, account) = (ctx.merchant, ctx.account());
    let rows = shared
        .db
        .as_merchant_committed(merchant, async |c: &AsyncPgConnection| {
            let conv =
                conversations::upsert(c, merchant, account, &msg.customer, Some(ctx.at)).await?;
            let parts: Vec<String> = match reply {
                Reply::Nothing | Reply::Unanswered => Vec::new(),
                Reply::Parts(p) => p.to_vec(),
                Reply::Handoff(text) => {
                    if conversations::set_needs_human(c, conv.id).await? {
                        // A message stored before bytes were checked may not fit one part:
                        // split it rather than fail the store and lose the request.
                        crate::reply::split(text)
                    } else {
                        Vec::new()
                    }
                }
            };
            let message = incoming_row(ctx, msg, conv.id);
            let event = ctx.new_event();
            let (_, (), rows, done) = futures::try_join!(
                conversations::add_message(c, merchant, &message),
                async {
                    if matches!(reply, Reply::Unanswered) {
                        events::record(c, merchant, &event).await.map(|_| ())
                    } else {
                        events::record_processed(c, merchant, &event).await
                    }
                },
                async {
                    if parts.is_empty() {
                        Ok(Vec::new())
                    } else {
                        outbound::create_parts(
                            c,
                            merchant,
                            conv.id,
                            &ctx.job.event_id,
                            account,
                            &msg.customer,
                            &parts,
                        )
                        .await
                    }
                },
                igsales_schema::commit(c),
            )?;
            Ok::<_, DbError>((rows, done))
        })
        .await?;
    Ok(rows)
}

/// Echoes, deletions, edits and the kinds that are only recorded.
/// `false` when the event was handled before (nothing done).
async fn on_other(
    c: &AsyncPgConnection,
    ctx: &Ctx<'_>,
    kind: EventKind,
    pause_until: DateTime<Utc>,
) -> Result<bool, DbError> {
    let (job, ev, merchant) = (ctx.job, ctx.ev, ctx.merchant);
    if !events::record(c, merchant, &ctx.new_event()).await?
        && events::is_processed(c, &job.event_id).await?
    {
        return Ok(false);
    }
    match kind {
        EventKind::Echo => {
            let Some(customer) = ev.recipient.as_ref().map(|p| p.id.0.clone()) else {
                return Ok(true);
            };
            let message = ev.message.as_ref();
            let mid = message
                .and_then(|m| m.mid.clone())
                .unwrap_or_else(|| job.event_id.clone());
            let text = message.and_then(|m| m.text.clone());
            let account = job.instagram_account_id.as_str();
            let conv = conversations::upsert(c, merchant, account, &customer, None).await?;
            let ours = outbound::confirm_echo(c, &customer, &mid, text.as_deref()).await?;
            conversations::add_message(
                c,
                merchant,
                &NewMessage {
                    conversation: conv.id,
                    mid: &mid,
                    direction: Direction::Outbound,
                    author: if ours {
                        Author::Assistant
                    } else {
                        Author::Human
                    },
                    text: text.as_deref(),
                    attachments: message
                        .and_then(|m| m.attachments.clone())
                        .unwrap_or_else(|| serde_json::json!([])),
                    sent_at: ctx.at,
                },
            )
            .await?;
            if !ours {
                // Someone answered from the Instagram app: the assistant steps back.
                conversations::pause(c, conv.id, pause_until).await?;
                tracing::info!(merchant.id = %merchant, conversation.id = %conv.id, "human took over the conversation");
            }
        }
        EventKind::Deleted => {
            if let Some(mid) = ev.message.as_ref().and_then(|m| m.mid.as_deref()) {
                conversations::delete_message(c, mid).await?;
            }
        }
        EventKind::Edit => {
            if let Some(e) = &ev.message_edit {
                conversations::edit_message(
                    c,
                    &e.mid,
                    e.text.as_deref().unwrap_or(""),
                    e.num_edit.unwrap_or(1),
                )
                .await?;
            }
        }
        _ => {}
    }
    Ok(true)
}

async fn push_sends(
    shared: &Shared,
    ctx: &Ctx<'_>,
    customer: &str,
    rows: Vec<Outbound>,
) -> Result<(), JobError> {
    let (job, merchant, at) = (ctx.job, ctx.merchant, ctx.at);
    let sends: Vec<SendMessageV1> = rows
        .into_iter()
        .filter(|r| r.status != OutboundStatus::Sent)
        .map(|r| SendMessageV1 {
            merchant_id: merchant.0,
            instagram_account_id: job.instagram_account_id.clone(),
            recipient_igsid: customer.to_owned(),
            idempotency_key: r.idempotency_key,
            window_closes_at: at + WINDOW,
            delivery: Default::default(),
        })
        .collect();
    if sends.is_empty() {
        return Ok(());
    }
    JobQueue::<SendMessageV1>::new(shared.redis.clone())
        .push_all(sends)
        .await
        .map_err(JobError::enqueue)
}
