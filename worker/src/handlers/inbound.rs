//! `inbound_event`: record the event, update the conversation, and answer when it is ours to
//! answer (SPEC §5.1–5.3).
//!
//! Idempotent: the event row (UNIQUE `(merchant_id, event_id)`) is written in the same
//! transaction as the conversation changes, and marked processed only once its reply parts are
//! stored and their sends enqueued. A re-run of a processed event does nothing; a re-run of an
//! unfinished one reuses the parts already stored (so the model is not asked twice) and pushes
//! their sends again, which the parts' own status makes harmless.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use diesel_async::AsyncPgConnection;
use igsales_jobs::{DeadReason, InboundEventV1, JobQueue, SendMessageV1};
use igsales_meta::IdString;
use igsales_meta::webhook::EventKind;
use igsales_schema::conversations::{self, NewMessage};
use igsales_schema::events::{self, NewEvent};
use igsales_schema::outbound::{self, Outbound};
use igsales_schema::{DbError, MerchantId, merchants, products};
use serde::Deserialize;
use uuid::Uuid;

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

/// What the transaction decided should happen next.
enum Next {
    /// Recorded (and marked processed): nothing to send.
    Nothing,
    /// Processed before: nothing to do at all.
    Done,
    /// Processed before, with parts that may never have been enqueued.
    Requeue {
        customer: String,
        parts: Vec<Outbound>,
    },
    /// Send the merchant's hand-off message (the conversation just got flagged).
    Handoff {
        conversation: Uuid,
        customer: String,
        text: String,
    },
    /// Ask the model, then send its answer.
    Reply(Box<ReplyPlan>),
    /// The customer's message is older than the 24-hour window: never answered.
    WindowExpired,
}

struct ReplyPlan {
    conversation: Uuid,
    customer: String,
    at: DateTime<Utc>,
    persona: String,
    products: Vec<products::Product>,
    history: Vec<(String, String)>,
    text: String,
    stored: Vec<Outbound>,
}

fn when(job: &InboundEventV1, ev: &Event) -> DateTime<Utc> {
    ev.timestamp
        .or(job.entry_time_ms)
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(job.received_at)
}

/// Two runs of one event at once (a duplicate delivery raced the first) would both ask the
/// model: a short lease in Redis makes the second wait and then find the event processed.
pub async fn run(job: InboundEventV1, shared: &Shared) -> Result<(), JobError> {
    let lease = format!("lease:inbound_event:{}:{}", job.merchant_id, job.event_id);
    let mut redis = shared.redis.clone();
    let ttl_ms = shared.settings.job_timeout.as_millis().max(1000) as u64;
    let won: Option<String> = redis::cmd("SET")
        .arg(&lease)
        .arg(1)
        .arg("NX")
        .arg("PX")
        .arg(ttl_ms)
        .query_async(&mut redis)
        .await
        .map_err(JobError::retry)?;
    if won.is_none() {
        return Err(JobError::Wait(
            std::time::Duration::from_millis(500),
            "event is being handled by another run",
        ));
    }
    let result = handle(job, shared).await;
    let _: Result<(), _> = redis::cmd("DEL").arg(&lease).query_async(&mut redis).await;
    result
}

async fn handle(job: InboundEventV1, shared: &Shared) -> Result<(), JobError> {
    let merchant = MerchantId(job.merchant_id);
    let ev: Event = serde_json::from_str(job.event.get())
        .map_err(|e| JobError::permanent(anyhow::anyhow!("unreadable event: {e}")))?;
    let at = when(&job, &ev);
    let now = Utc::now();
    let takeover = ChronoDuration::from_std(shared.settings.human_takeover)
        .unwrap_or(ChronoDuration::hours(12));
    let ctx = Ctx {
        job: &job,
        ev: &ev,
        merchant,
        at,
        now,
    };

    let next = shared
        .db
        .as_merchant(merchant, async |c: &AsyncPgConnection| {
            let next = match job.kind {
                EventKind::Message | EventKind::Postback => on_message(c, &ctx).await?,
                kind => on_other(c, &ctx, kind, now + takeover).await?,
            };
            if matches!(next, Next::Nothing | Next::WindowExpired) {
                events::mark_processed(c, &job.event_id).await?;
            }
            Ok::<_, DbError>(next)
        })
        .await?;

    match next {
        Next::Nothing | Next::Done => Ok(()),
        Next::WindowExpired => {
            metrics::counter!(REPLIES, "result" => "window_expired").increment(1);
            Err(JobError::Dead(
                DeadReason::WindowExpired,
                anyhow::anyhow!("the customer's message is older than the 24-hour window"),
            ))
        }
        Next::Requeue { customer, parts } => {
            push_sends(shared, &job, merchant, &customer, at, parts).await
        }
        Next::Handoff {
            conversation,
            customer,
            text,
        } => {
            metrics::counter!(REPLIES, "result" => "handoff").increment(1);
            deliver(
                shared,
                &job,
                merchant,
                conversation,
                &customer,
                at,
                vec![text],
            )
            .await
        }
        Next::Reply(plan) => answer(shared, &job, merchant, *plan).await,
    }
}

/// What every branch of the first transaction reads.
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
}

/// A customer's message or postback. The independent reads and writes go out pipelined, in
/// two round trips: they touch different rows, so their order on the wire does not matter.
async fn on_message(c: &AsyncPgConnection, ctx: &Ctx<'_>) -> Result<Next, DbError> {
    let (job, ev, merchant, at) = (ctx.job, ctx.ev, ctx.merchant, ctx.at);
    let account = job.instagram_account_id.as_str();
    let customer = ev
        .sender
        .as_ref()
        .map(|p| p.id.0.clone())
        .filter(|c| c != account);
    let content = match (&ev.message, &ev.postback) {
        (Some(m), _) => Some((
            m.mid.clone().unwrap_or_else(|| job.event_id.clone()),
            m.text.clone(),
            m.attachments.clone(),
        )),
        (None, Some(p)) => Some((
            p.mid.clone().unwrap_or_else(|| job.event_id.clone()),
            p.title.clone().or_else(|| p.payload.clone()),
            None,
        )),
        (None, None) => None,
    };
    let (Some(customer), Some((mid, text, attachments))) = (customer, content) else {
        if !events::record(c, merchant, &ctx.new_event()).await?
            && events::is_processed(c, &job.event_id).await?
        {
            return Ok(Next::Done);
        }
        return Ok(Next::Nothing);
    };

    let event = ctx.new_event();
    let (fresh, conv, shop, catalog) = futures::try_join!(
        events::record(c, merchant, &event),
        conversations::upsert(c, merchant, account, &customer, Some(at)),
        merchants::find(c, merchant),
        products::list_first(c, reply::SMALL_CATALOG + 1),
    )?;
    if !fresh && events::is_processed(c, &job.event_id).await? {
        // Finished before, but its sends may not have reached the queue (the push failed
        // after the commit): parts never claimed go again; their rows make that harmless.
        let parts: Vec<Outbound> = outbound::for_event(c, &job.event_id)
            .await?
            .into_iter()
            .filter(|p| p.status == "pending")
            .collect();
        return Ok(if parts.is_empty() {
            Next::Done
        } else {
            Next::Requeue { customer, parts }
        });
    }
    let message = NewMessage {
        conversation: conv.id,
        mid: &mid,
        direction: "inbound",
        author: "customer",
        text: text.as_deref(),
        attachments: attachments.unwrap_or_else(|| serde_json::json!([])),
        sent_at: at,
    };
    let Some(shop) = shop else {
        conversations::add_message(c, merchant, &message).await?;
        return Ok(Next::Nothing);
    };
    let text = text.clone().unwrap_or_default();
    if reply::asks_for_human(&text) {
        conversations::add_message(c, merchant, &message).await?;
        return Ok(if conversations::set_needs_human(c, conv.id).await? {
            Next::Handoff {
                conversation: conv.id,
                customer,
                text: shop.handoff_message,
            }
        } else {
            Next::Nothing
        });
    }
    let quiet = !shop.ai_enabled
        || conv.needs_human
        || conv.paused_until.is_some_and(|p| p > ctx.now)
        || text.trim().is_empty();
    // A newer message exists (the clock moved past this one): that one gets the answer.
    let superseded = conv
        .last_customer_message_at
        .is_some_and(|latest| latest > at);
    let expired = ctx.now - at > WINDOW;
    if quiet || expired || superseded {
        conversations::add_message(c, merchant, &message).await?;
        return Ok(if !quiet && expired {
            Next::WindowExpired
        } else {
            Next::Nothing
        });
    }

    // A small catalog goes in whole; a large one by relevance.
    let large = catalog.len() as i64 > reply::SMALL_CATALOG;
    let words = reply::search_words(&text);
    let (_, recent, relevant, stored) = futures::try_join!(
        conversations::add_message(c, merchant, &message),
        conversations::recent_messages(c, conv.id, HISTORY + 1),
        async {
            if large {
                products::search(c, &words, reply::RELEVANT_PRODUCTS).await
            } else {
                Ok(Vec::new())
            }
        },
        // A re-run of an unfinished event finds its parts already stored.
        async {
            if fresh {
                Ok(Vec::new())
            } else {
                outbound::for_event(c, &job.event_id).await
            }
        },
    )?;
    // The stored message has `sent_at == at`, so it is left out whichever order the
    // pipelined statements ran in.
    let history = recent
        .into_iter()
        .filter(|(_, _, sent)| *sent < at)
        .map(|(a, t, _)| (a, t))
        .collect();
    Ok(Next::Reply(Box::new(ReplyPlan {
        conversation: conv.id,
        customer,
        at,
        persona: shop.persona,
        products: if large { relevant } else { catalog },
        history,
        text,
        stored,
    })))
}

/// Echoes, deletions, edits and the kinds that are only recorded.
async fn on_other(
    c: &AsyncPgConnection,
    ctx: &Ctx<'_>,
    kind: EventKind,
    pause_until: DateTime<Utc>,
) -> Result<Next, DbError> {
    let (job, ev, merchant) = (ctx.job, ctx.ev, ctx.merchant);
    if !events::record(c, merchant, &ctx.new_event()).await?
        && events::is_processed(c, &job.event_id).await?
    {
        return Ok(Next::Done);
    }
    match kind {
        EventKind::Echo => {
            let Some(customer) = ev.recipient.as_ref().map(|p| p.id.0.clone()) else {
                return Ok(Next::Nothing);
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
                    direction: "outbound",
                    author: if ours { "assistant" } else { "human" },
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
    Ok(Next::Nothing)
}

/// Asks the model (unless a previous run already stored the answer) and sends it.
async fn answer(
    shared: &Shared,
    job: &InboundEventV1,
    merchant: MerchantId,
    plan: ReplyPlan,
) -> Result<(), JobError> {
    let at = plan.at;
    if !plan.stored.is_empty() {
        let (event_id, parts) = (job.event_id.clone(), plan.stored);
        shared
            .db
            .as_merchant(merchant, async move |c: &AsyncPgConnection| {
                events::mark_processed(c, &event_id).await?;
                Ok::<_, DbError>(())
            })
            .await?;
        return push_sends(shared, job, merchant, &plan.customer, at, parts).await;
    }
    let messages = reply::prompt(&plan.persona, &plan.products, &plan.history, &plan.text);
    let text = shared
        .llm
        .complete(messages)
        .await
        .map_err(crate::llm::LlmError::into_job_error)?;
    if text.contains(HANDOFF_MARKER) {
        let conversation = plan.conversation;
        let handoff = shared
            .db
            .as_merchant(merchant, async |c: &AsyncPgConnection| {
                let flipped = conversations::set_needs_human(c, conversation).await?;
                let shop = merchants::find(c, merchant).await?;
                Ok::<_, DbError>(flipped.then_some(shop.map(|s| s.handoff_message)).flatten())
            })
            .await?;
        metrics::counter!(REPLIES, "result" => "handoff").increment(1);
        return match handoff {
            Some(t) => {
                deliver(
                    shared,
                    job,
                    merchant,
                    conversation,
                    &plan.customer,
                    at,
                    vec![t],
                )
                .await
            }
            None => finish(shared, merchant, &job.event_id).await,
        };
    }
    let parts = reply::split(&text);
    if parts.is_empty() {
        metrics::counter!(REPLIES, "result" => "empty").increment(1);
        return finish(shared, merchant, &job.event_id).await;
    }
    metrics::counter!(REPLIES, "result" => "answered").increment(1);
    deliver(
        shared,
        job,
        merchant,
        plan.conversation,
        &plan.customer,
        at,
        parts,
    )
    .await
}

/// Stores the parts and marks the event processed in one transaction, then enqueues their
/// sends. A push that fails after the commit is repaired by the retry: it finds the event
/// processed and re-enqueues the parts still pending.
async fn deliver(
    shared: &Shared,
    job: &InboundEventV1,
    merchant: MerchantId,
    conversation: Uuid,
    customer: &str,
    at: DateTime<Utc>,
    parts: Vec<String>,
) -> Result<(), JobError> {
    let (event_id, account) = (job.event_id.clone(), job.instagram_account_id.clone());
    let customer_id = customer.to_owned();
    let rows = shared
        .db
        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
            let (rows, ()) = futures::try_join!(
                outbound::create_parts(
                    c,
                    merchant,
                    conversation,
                    &event_id,
                    &account,
                    &customer_id,
                    &parts
                ),
                events::mark_processed(c, &event_id),
            )?;
            Ok::<_, DbError>(rows)
        })
        .await?;
    push_sends(shared, job, merchant, customer, at, rows).await
}

async fn push_sends(
    shared: &Shared,
    job: &InboundEventV1,
    merchant: MerchantId,
    customer: &str,
    at: DateTime<Utc>,
    rows: Vec<Outbound>,
) -> Result<(), JobError> {
    let sends: Vec<SendMessageV1> = rows
        .into_iter()
        .filter(|r| r.status != "sent")
        .map(|r| SendMessageV1 {
            merchant_id: merchant.0,
            instagram_account_id: job.instagram_account_id.clone(),
            recipient_igsid: customer.to_owned(),
            idempotency_key: r.idempotency_key,
            window_closes_at: at + WINDOW,
            delivery: Default::default(),
        })
        .collect();
    JobQueue::<SendMessageV1>::new(shared.redis.clone())
        .push_all(sends)
        .await
        .map_err(JobError::retry)
}

async fn finish(shared: &Shared, merchant: MerchantId, event_id: &str) -> Result<(), JobError> {
    let id = event_id.to_owned();
    shared
        .db
        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
            Ok::<_, DbError>(events::mark_processed(c, &id).await?)
        })
        .await?;
    Ok(())
}
