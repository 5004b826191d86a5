//! `inbound_event` and `inbound_signal`: record the event, update the conversation, and answer
//! when it is ours to answer (SPEC §5.1–5.3).
//!
//! Order of work for a customer's message (or postback), and why:
//! 1. A short Redis lease on the event (`run`): two runs at once (a duplicate delivery raced
//!    the first) would both pay the model; the second waits and then finds the event processed.
//! 2. One read-only transaction: the event's state, the conversation, the shop, the catalog,
//!    the history, the parts of an earlier run and the account's reauth flag, in one flight,
//!    whether or not they turn out to be needed, so nothing waits on a first answer.
//! 3. `decide`, from what was read and without I/O, in this order: processed before (push
//!    again the parts that never started); no shop (store only); a request for a person (hand
//!    off, whatever else holds); not ours to answer, i.e. assistant off, a person's
//!    conversation, paused or no text (store only, however old); outside Meta's 24-hour window
//!    (store, dead letter); superseded by a newer message (store only); an answer an earlier
//!    run stored (push it); an account that needs its owner (store unanswered, dead letter);
//!    else answer. Every check that needs no model comes first, so the model is paid only for
//!    a reply that can go.
//! 4. The model, outside any transaction (or the answer a failed run kept in Redis); then
//!    `answered` decides between a hand-off, nothing and the reply parts.
//! 5. One write transaction: the conversation's clock, the message, the reply parts and the
//!    event record (UNIQUE `(merchant_id, event_id)`, marked processed) commit together. If it
//!    fails after the model answered, the answer is kept in Redis so the next run does not buy
//!    it again.
//! 6. The sends are enqueued after the commit. A re-run of a processed event enqueues again only
//!    the parts that never started (a push that failed after the commit); the parts' own status
//!    makes a duplicate send job harmless.
//!
//! Other kinds (which the ingress puts on `inbound_signal`, away from the model's backlog)
//! record the event and act in one transaction.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use diesel_async::AsyncPgConnection;
use igsales_jobs::{DeadReason, InboundEventV1, JobQueue, SendChannel, SendMessageV1};
use igsales_meta::webhook::{EventKind, Messaging};
use igsales_schema::conversations::{self, Author, Conversation, Direction, NewMessage};
use igsales_schema::events::{self, NewEvent};
use igsales_schema::merchants::{self, Merchant};
use igsales_schema::outbound::{self, Channel, NewPart, Outbound, OutboundStatus};
use igsales_schema::{DbError, MerchantId, accounts, comments, products};

use crate::handlers::Shared;
use crate::runtime::outcome::JobError;
use crate::sales::answer::Answer;
use crate::sales::cards::{self, Lang, Tap};
use crate::sales::context::{self, Came};
use crate::sales::reply::{self, HANDOFF_MARKER};

pub const REPLIES: &str = "igsales_replies_total";
/// Meta's messaging window after the customer's last message.
const WINDOW: ChronoDuration = ChronoDuration::hours(24);
const HISTORY: i64 = 12;

fn when(job: &InboundEventV1, ev: &Messaging) -> DateTime<Utc> {
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
    let ttl = shared.settings.pool.heartbeat();
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
    if job.kind == EventKind::Comment {
        return crate::handlers::comment::run(&job, shared).await;
    }
    let merchant = MerchantId(job.merchant_id);
    let ev: Messaging = serde_json::from_str(job.event.get())
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
    let takeover = ChronoDuration::from_std(shared.settings.conversation.human_takeover)
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
    ev: &'a Messaging,
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
#[derive(Debug, PartialEq)]
struct Incoming {
    customer: String,
    mid: String,
    text: Option<String>,
    attachments: serde_json::Value,
    /// The payload of a tapped postback button or quick reply.
    tap: Option<String>,
    /// What the message came with (a story, a shared post, a link's ref, photos).
    came: Came,
    reply_to: Option<serde_json::Value>,
}

/// `None` when there is no customer's message to store: no sender, the account itself sent it,
/// or neither `message` nor `postback` is there.
fn incoming(job: &InboundEventV1, ev: &Messaging) -> Option<Incoming> {
    let customer = ev
        .sender
        .as_ref()
        .map(|p| p.id.0.clone())
        .filter(|c| *c != job.instagram_account_id)?;
    let (mid, text, attachments, tap, came, reply_to) = match (&ev.message, &ev.postback) {
        (Some(m), _) => (
            m.mid.clone(),
            m.text.clone(),
            m.attachments.clone(),
            m.quick_reply.as_ref().and_then(|q| q.payload.clone()),
            Came::of(m),
            m.reply_to.clone(),
        ),
        (None, Some(p)) => (
            p.mid.clone(),
            p.title.clone().or_else(|| p.payload.clone()),
            None,
            p.payload.clone(),
            Came::default(),
            None,
        ),
        (None, None) => return None,
    };
    Some(Incoming {
        customer,
        mid: mid.unwrap_or_else(|| job.event_id.clone()),
        text,
        attachments: attachments.unwrap_or_else(|| serde_json::json!([])),
        tap,
        came,
        reply_to,
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
    /// The product a tap was about, when the catalog has it.
    tapped: Option<products::Product>,
    /// The products linked to what the message came with: its shared posts, its ref, the ref
    /// the conversation recorded recently.
    linked: Vec<products::Product>,
}

/// What to do with a customer's message, each with what its action needs.
#[derive(Debug)]
enum Decision {
    /// Handled before, but its sends may not have reached the queue (the push failed after the
    /// commit): these parts never started and go again.
    Resend(Vec<Outbound>),
    /// Store the message; nothing to answer.
    Record(Silent),
    /// Outside Meta's 24-hour window, where it would have been answered: stored, and a dead
    /// letter `window_expired`.
    Expired,
    /// The customer asked for a person: the shop's hand-off message.
    Handoff(String),
    /// An earlier run stored the answer but did not finish: store the message and push these
    /// parts; the model is not asked again.
    Resume(Vec<Outbound>),
    /// Kept unprocessed and dead-lettered, so a replay after the owner reconnects (and within
    /// the window) still answers it; the model is not paid for a reply that cannot go.
    NeedsReauth,
    /// Ask the model.
    Answer(Box<Prompt>),
}

/// Why a message is stored without an answer.
#[derive(Debug, PartialEq, Eq)]
enum Silent {
    /// The merchant is gone.
    NoShop,
    /// The assistant is off, a person has the conversation (flagged or paused), or there is no
    /// text to answer.
    Quiet,
    /// A newer message was stored before: that one gets the answer.
    Superseded,
}

/// What the model is asked with.
#[derive(Debug)]
struct Prompt {
    shop: Merchant,
    products: Vec<products::Product>,
    history: Vec<(Author, String)>,
    /// The product a tapped card button or quick reply was about (also in `products`).
    tapped: Option<products::Product>,
    /// The ref the conversation came through: the message's own, else one recorded within
    /// the window before it.
    referral: Option<String>,
}

/// Decides what to do with the customer's message `text`, sent `at` with what `came` with it,
/// from what was read.
fn decide(seen: Seen, text: &str, came: &Came, at: DateTime<Utc>, now: DateTime<Utc>) -> Decision {
    if seen.state == Some(true) {
        let pending = seen
            .parts
            .into_iter()
            .filter(|p| p.status == OutboundStatus::Pending)
            .collect();
        return Decision::Resend(pending);
    }
    let Some(shop) = seen.shop else {
        return Decision::Record(Silent::NoShop);
    };
    if reply::asks_for_human(text) {
        return Decision::Handoff(shop.handoff_message);
    }
    let conv = seen.conversation.as_ref();
    let quiet = !shop.ai_enabled
        || conv.is_some_and(|c| c.needs_human || c.paused_until.is_some_and(|p| p > now))
        || (text.trim().is_empty() && !came.answerable());
    if quiet {
        // Not ours to answer, so no dead letter either, however old.
        return Decision::Record(Silent::Quiet);
    }
    if now - at > WINDOW {
        return Decision::Expired;
    }
    if conv.is_some_and(|c| c.last_customer_message_at.is_some_and(|latest| latest > at)) {
        return Decision::Record(Silent::Superseded);
    }
    if !seen.parts.is_empty() {
        return Decision::Resume(seen.parts);
    }
    if seen.needs_reauth {
        return Decision::NeedsReauth;
    }
    // A tapped product goes into the prompt first, then those linked to where the customer
    // came from, whatever the search found.
    let mut first: Vec<products::Product> = seen.tapped.iter().cloned().collect();
    for p in seen.linked {
        if !first.iter().any(|f| f.sku == p.sku) {
            first.push(p);
        }
    }
    let mut products = seen.products;
    products.retain(|p| !first.iter().any(|f| f.sku == p.sku));
    first.extend(products);
    first.truncate(reply::RELEVANT_PRODUCTS.max(reply::SMALL_CATALOG) as usize);
    let recorded = conv
        .and_then(|c| c.referral_ref.clone().zip(c.referral_at))
        .filter(|(_, when)| *when >= at - WINDOW)
        .map(|(r, _)| r);
    Decision::Answer(Box::new(Prompt {
        shop,
        products: first,
        history: seen.history,
        tapped: seen.tapped,
        referral: came.referral.clone().or(recorded),
    }))
}

/// What to do with the model's answer.
#[derive(Debug, PartialEq)]
enum Answered {
    /// The model handed over to a person.
    Handoff,
    /// Nothing left to send once trimmed.
    Empty,
    Parts(Vec<NewPart>),
}

/// The answer (held to the catalog by the guard) as what the customer receives: text, cards
/// of the `products` it chose, quick replies.
fn answered(answer: &Answer, products: &[products::Product], lang: Lang) -> Answered {
    if answer.handoff || answer.text.contains(HANDOFF_MARKER) {
        return Answered::Handoff;
    }
    let parts = cards::parts(answer, products, lang);
    if parts.is_empty() {
        Answered::Empty
    } else {
        Answered::Parts(parts)
    }
}

/// What the write transaction stores besides the message.
enum Reply<'a> {
    Nothing,
    /// The model call failed: the event is recorded but left unprocessed, so a retry (or a
    /// replay of the dead letter) still answers it.
    Unanswered,
    Parts(&'a [NewPart]),
    /// Flag the conversation for a person; the hand-off message goes out only if this run
    /// flipped the flag.
    Handoff(&'a str),
}

/// Reads → `decide` → acts; see the module comment for the order.
async fn on_message(shared: &Shared, ctx: &Ctx<'_>) -> Result<(), JobError> {
    let (job, merchant) = (ctx.job, ctx.merchant);
    let Some(msg) = incoming(job, ctx.ev) else {
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
    let seen = read(shared, ctx, &msg, &text).await?;
    match decide(seen, &text, &msg.came, ctx.at, ctx.now) {
        Decision::Resend(pending) => push_sends(shared, ctx, &msg.customer, pending).await,
        Decision::Record(why) => {
            tracing::debug!(merchant.id = %merchant, event.id = %job.event_id, reason = ?why, "message stored without an answer");
            store(shared, ctx, &msg, Reply::Nothing).await?;
            Ok(())
        }
        Decision::Expired => {
            store(shared, ctx, &msg, Reply::Nothing).await?;
            metrics::counter!(REPLIES, "result" => "window_expired").increment(1);
            Err(JobError::Dead(
                DeadReason::WindowExpired,
                anyhow::anyhow!("the customer's message is older than the 24-hour window"),
            ))
        }
        Decision::Handoff(message) => handoff(shared, ctx, &msg, &message).await,
        Decision::Resume(parts) => {
            store(shared, ctx, &msg, Reply::Nothing).await?;
            push_sends(shared, ctx, &msg.customer, parts).await
        }
        Decision::NeedsReauth => {
            store(shared, ctx, &msg, Reply::Unanswered).await?;
            metrics::counter!(REPLIES, "result" => "needs_reauth").increment(1);
            Err(JobError::Dead(
                DeadReason::NeedsReauth,
                anyhow::anyhow!("the account needs its owner to authorise it again"),
            ))
        }
        Decision::Answer(prompt) => answer(shared, ctx, &msg, &text, &prompt).await,
    }
}

/// The customer's words as a vector, when semantic search is on; without one (model down or
/// slow, OPENAI_EMBEDDING_TIMEOUT_MS) the search is lexical, never failed.
pub(super) async fn query_embedding(shared: &Shared, text: &str) -> Option<Vec<f32>> {
    let embedder = shared.embedder.as_ref()?;
    if products::query_words(text).is_empty() {
        return None;
    }
    match embedder.embed(vec![text.to_owned()]).await {
        Ok(mut v) => v.pop(),
        Err(e) => {
            tracing::warn!(error = %e, "query embedding failed; searching by words only");
            None
        }
    }
}

/// The one read-only transaction of a customer's message.
async fn read(
    shared: &Shared,
    ctx: &Ctx<'_>,
    msg: &Incoming,
    text: &str,
) -> Result<Seen, JobError> {
    let (job, merchant, at) = (ctx.job, ctx.merchant, ctx.at);
    // A shared post's caption says what the customer is looking at: it is searched with the
    // text.
    let words = match msg.came.search_words() {
        extra if extra.is_empty() => text.to_owned(),
        extra => format!("{text} {extra}"),
    };
    let query = products::SearchQuery {
        embedding: query_embedding(shared, &words).await,
        text: words,
        limit: reply::RELEVANT_PRODUCTS,
    };
    let refs: Vec<String> = msg.came.referral.iter().cloned().collect();
    let account = ctx.account();
    let tapped: Vec<String> = msg
        .tap
        .as_deref()
        .and_then(Tap::parse)
        .map(|t| vec![t.sku().to_owned()])
        .unwrap_or_default();
    // Everything in one flight, COMMIT included: the parts of an earlier run and the relevant
    // products are read whether or not they turn out to be needed (both are cheap index or
    // small-catalog reads), so nothing waits on a first answer.
    let seen = shared
        .db
        .as_merchant_committed(merchant, async |c: &AsyncPgConnection| {
            // A message naming products gets the ones that match, or none (the prompt then
            // says the shop has nothing that fits); one naming none ("oi!") the first ones.
            let catalog = async {
                if products::query_words(&query.text).is_empty() {
                    products::list_first(c, reply::SMALL_CATALOG).await
                } else {
                    Ok(products::search(c, &query).await?.into_products())
                }
            };
            let (state, conversation, shop, products, recent, parts, reauth, tapped, linked, done) =
                futures::try_join!(
                    events::state(c, &job.event_id),
                    conversations::find(c, account, &msg.customer),
                    merchants::find(c, merchant),
                    catalog,
                    conversations::recent_messages_with(c, account, &msg.customer, HISTORY + 1),
                    outbound::for_event(c, &job.event_id),
                    accounts::needs_reauth(c, account),
                    products::with_skus(c, &tapped),
                    comments::linked_to_message(
                        c,
                        &msg.came.media_ids,
                        &refs,
                        (account, &msg.customer),
                        at - WINDOW,
                    ),
                    igsales_schema::commit(c),
                )?;
            let history = recent
                .iter()
                .filter(|p| p.sent_at < at)
                .filter_map(|p| Some((p.author, context::history_line(p)?)))
                .collect();
            let seen = Seen {
                state,
                conversation,
                shop,
                products,
                history,
                parts,
                needs_reauth: reauth == Some(true),
                tapped: tapped.into_iter().next(),
                linked,
            };
            Ok::<_, DbError>((seen, done))
        })
        .await?;
    Ok(seen)
}

/// Asks the model (or takes the answer a failed run kept), holds it to the catalog (the price
/// guard), then stores and sends the reply.
async fn answer(
    shared: &Shared,
    ctx: &Ctx<'_>,
    msg: &Incoming,
    text: &str,
    prompt: &Prompt,
) -> Result<(), JobError> {
    // A run after a failed one may find the model's answer kept from it (the store failed).
    let kept = if ctx.job.delivery.is_fresh() {
        None
    } else {
        kept_answer(shared, ctx.merchant, &ctx.job.event_id).await
    };
    let from_kept = kept.is_some();
    let lang = Lang::from(prompt.shop.language);
    let answer = match kept {
        Some(answer) => Ok(answer),
        None => {
            let said = msg
                .came
                .said(text, prompt.referral.as_deref(), shared.llm.vision());
            let messages = reply::prompt(
                &prompt.shop.persona,
                &prompt.products,
                &prompt.history,
                &said,
            );
            let tapped = prompt.tapped.as_ref().map(|product| reply::Tapped {
                title: text,
                product,
            });
            let (structured, plain) = reply::variants(messages, tapped.as_ref());
            crate::sales::guard::ask(
                &shared.llm,
                structured,
                || plain.clone(),
                &prompt.products,
                lang,
            )
            .await
        }
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            // The customer's message is kept even if no answer ever comes (the job may end as a
            // dead letter); the event stays unprocessed, so a retry still answers it.
            store(shared, ctx, msg, Reply::Unanswered).await?;
            return Err(e.into_job_error());
        }
    };
    let parts = match answered(&answer, &prompt.products, lang) {
        Answered::Handoff => return handoff(shared, ctx, msg, &prompt.shop.handoff_message).await,
        Answered::Empty => {
            metrics::counter!(REPLIES, "result" => "empty").increment(1);
            store(shared, ctx, msg, Reply::Nothing).await?;
            return Ok(());
        }
        Answered::Parts(parts) => parts,
    };
    metrics::counter!(REPLIES, "result" => "answered").increment(1);
    let rows = match store(shared, ctx, msg, Reply::Parts(&parts)).await {
        Ok(rows) => rows,
        Err(e) => {
            // Paid for: keep the answer (as guarded, structure and all) until it is stored, so
            // the next run does not buy it again (best effort: without Redis the next run asks
            // the model once more).
            if !from_kept {
                keep_answer(shared, ctx.merchant, &ctx.job.event_id, &answer).await;
            }
            return Err(e);
        }
    };
    if from_kept {
        forget_answer(shared, ctx.merchant, &ctx.job.event_id).await;
    }
    push_sends(shared, ctx, &msg.customer, rows).await
}

/// Where a model answer waits for its store: `kept_answer:{merchant}:{sha256(event_id)[..32]}`.
fn kept_key(merchant: MerchantId, event_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, event_id.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("kept_answer:{merchant}:{hex}")
}

/// Kept as long as the event could still be answered (the 24-hour window).
const KEPT_ANSWER_SECS: u64 = 24 * 3600;

pub(super) async fn keep_answer(
    shared: &Shared,
    merchant: MerchantId,
    event_id: &str,
    answer: &Answer,
) {
    let Ok(json) = serde_json::to_string(answer) else {
        return;
    };
    let mut redis = shared.redis.clone();
    let kept: redis::RedisResult<()> = redis::cmd("SET")
        .arg(kept_key(merchant, event_id))
        .arg(json)
        .arg("EX")
        .arg(KEPT_ANSWER_SECS)
        .query_async(&mut redis)
        .await;
    if let Err(e) = kept {
        tracing::warn!(merchant.id = %merchant, error = %e, "could not keep the model's answer for the next run");
    }
}

/// The kept answer: the structure (an answer kept as plain text by an older worker is read as
/// plain text).
pub(super) async fn kept_answer(
    shared: &Shared,
    merchant: MerchantId,
    event_id: &str,
) -> Option<Answer> {
    let mut redis = shared.redis.clone();
    let kept = redis::cmd("GET")
        .arg(kept_key(merchant, event_id))
        .query_async::<Option<String>>(&mut redis)
        .await
        .ok()
        .flatten()?;
    Some(Answer::parse(&kept).unwrap_or_else(|| Answer::plain(&kept)))
}

pub(super) async fn forget_answer(shared: &Shared, merchant: MerchantId, event_id: &str) {
    let mut redis = shared.redis.clone();
    let _: redis::RedisResult<()> = redis::cmd("DEL")
        .arg(kept_key(merchant, event_id))
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
        reply_to: msg.reply_to.clone(),
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
            let parts: Vec<NewPart> = match reply {
                Reply::Nothing | Reply::Unanswered => Vec::new(),
                Reply::Parts(p) => p.to_vec(),
                Reply::Handoff(text) => {
                    if conversations::set_needs_human(c, conv.id).await? {
                        // A message stored before bytes were checked may not fit one part:
                        // split it rather than fail the store and lose the request.
                        crate::sales::reply::split(text)
                            .into_iter()
                            .map(NewPart::text)
                            .collect()
                    } else {
                        Vec::new()
                    }
                }
            };
            let message = incoming_row(ctx, msg, conv.id);
            let event = ctx.new_event();
            let (_, (), (), rows, done) = futures::try_join!(
                conversations::add_message(c, merchant, &message),
                async {
                    match &msg.came.referral {
                        Some(r) => conversations::set_referral(c, conv.id, r, ctx.at).await,
                        None => Ok(()),
                    }
                },
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
            let echoed = match (
                text.as_deref().filter(|t| !t.is_empty()),
                message.and_then(|m| m.attachments.as_ref()),
            ) {
                (Some(t), _) => outbound::Echoed::Text(t),
                // Only a template can be our card message; a person's photo is no echo of ours.
                (None, Some(a)) if is_template(a) => outbound::Echoed::Attachments,
                _ => outbound::Echoed::Nothing,
            };
            let ours = outbound::confirm_echo(c, &customer, &mid, echoed).await?;
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
                    reply_to: None,
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
        EventKind::Reaction => {
            // Kept on the message reacted to; the history shows it to the model.
            if let Some(r) = ev.reaction.as_ref().filter(|r| !r.mid.is_empty()) {
                conversations::react(c, &r.mid, r.shown(), ctx.at).await?;
            }
        }
        EventKind::Referral => {
            // An ig.me link with a ref opened an existing thread: the next message's prompt
            // gets the ref and the products tied to it.
            let customer = ev
                .sender
                .as_ref()
                .map(|p| p.id.as_str())
                .filter(|c| *c != job.instagram_account_id);
            let reference = ev.referral.as_ref().and_then(|r| r.reference.as_deref());
            if let (Some(customer), Some(reference)) = (customer, reference) {
                let account = job.instagram_account_id.as_str();
                let conv = conversations::upsert(c, merchant, account, customer, None).await?;
                conversations::set_referral(c, conv.id, reference, ctx.at).await?;
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

/// An echo's attachments hold a template (`type: "template"`, one object or a list).
fn is_template(attachments: &serde_json::Value) -> bool {
    let one = |a: &serde_json::Value| a.get("type").and_then(|t| t.as_str()) == Some("template");
    match attachments {
        serde_json::Value::Array(items) => items.iter().any(one),
        other => one(other),
    }
}

async fn push_sends(
    shared: &Shared,
    ctx: &Ctx<'_>,
    customer: &str,
    rows: Vec<Outbound>,
) -> Result<(), JobError> {
    push_parts(
        shared,
        ctx.merchant,
        ctx.account(),
        customer,
        rows,
        ctx.at + WINDOW,
    )
    .await
}

/// Enqueues a send for every part of `rows` not sent yet; none goes out after `closes_at`.
pub(super) async fn push_parts(
    shared: &Shared,
    merchant: MerchantId,
    account: &str,
    customer: &str,
    rows: Vec<Outbound>,
    closes_at: DateTime<Utc>,
) -> Result<(), JobError> {
    let sends: Vec<SendMessageV1> = rows
        .into_iter()
        .filter(|r| r.status != OutboundStatus::Sent)
        .map(|r| SendMessageV1 {
            merchant_id: merchant.0,
            instagram_account_id: account.to_owned(),
            recipient_igsid: customer.to_owned(),
            idempotency_key: r.idempotency_key,
            window_closes_at: closes_at,
            delivery: Default::default(),
            channel: match r.channel {
                Channel::Dm => SendChannel::Dm,
                Channel::PrivateReply => SendChannel::PrivateReply,
                Channel::PublicReply => SendChannel::PublicReply,
            },
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

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    const ACCOUNT: &str = "17841400538867190";

    fn t(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("time")
            .with_timezone(&Utc)
    }

    /// The customer's message was sent at `SENT`; the decision runs a minute later.
    const SENT: &str = "2026-11-26T05:00:00Z";
    const NOW: &str = "2026-11-26T05:01:00Z";

    fn shop() -> Merchant {
        Merchant {
            id: uuid::Uuid::nil(),
            name: "Loja".into(),
            persona: "friendly".into(),
            ai_enabled: true,
            handoff_message: "A person will answer soon.".into(),
            language: Default::default(),
        }
    }

    fn conversation() -> Conversation {
        Conversation {
            id: uuid::Uuid::nil(),
            needs_human: false,
            paused_until: None,
            last_customer_message_at: Some(t(SENT)),
            referral_ref: None,
            referral_at: None,
        }
    }

    fn part(index: i16, status: OutboundStatus) -> Outbound {
        Outbound {
            id: uuid::Uuid::new_v4(),
            conversation_id: uuid::Uuid::nil(),
            idempotency_key: format!("key-{index}"),
            recipient_igsid: "1129842642640637".into(),
            part_index: index,
            text: format!("part {index}"),
            status,
            send_attempts: 0,
            meta_message_id: None,
            sending_started_at: None,
            created_at: t(SENT),
            last_error: None,
            payload: None,
            channel: Channel::Dm,
            comment_id: None,
        }
    }

    /// A new message to an active shop, in an existing conversation.
    fn seen() -> Seen {
        Seen {
            state: None,
            conversation: Some(conversation()),
            shop: Some(shop()),
            products: Vec::new(),
            history: vec![(Author::Customer, "oi".into())],
            parts: Vec::new(),
            needs_reauth: false,
            tapped: None,
            linked: Vec::new(),
        }
    }

    fn decide_now(seen: Seen, text: &str) -> Decision {
        decide(seen, text, &Came::default(), t(SENT), t(NOW))
    }

    fn keys(parts: &[Outbound]) -> Vec<&str> {
        parts.iter().map(|p| p.idempotency_key.as_str()).collect()
    }

    #[test]
    fn a_new_message_to_an_active_shop_is_answered_with_its_persona_and_history() {
        let Decision::Answer(prompt) = decide_now(seen(), "tem a camiseta azul?") else {
            panic!("not answered");
        };
        assert_eq!(prompt.shop.persona, "friendly");
        assert_eq!(prompt.history, [(Author::Customer, "oi".to_owned())]);
        // A first message has no conversation yet.
        let first = Seen {
            conversation: None,
            ..seen()
        };
        assert!(matches!(decide_now(first, "oi"), Decision::Answer(_)));
    }

    #[test]
    fn an_event_handled_before_sends_again_only_the_parts_that_never_started() {
        let done = Seen {
            state: Some(true),
            parts: vec![
                part(0, OutboundStatus::Sent),
                part(1, OutboundStatus::Pending),
                part(2, OutboundStatus::Sending),
            ],
            ..seen()
        };
        let Decision::Resend(parts) = decide_now(done, "tem a camiseta azul?") else {
            panic!("not resent");
        };
        assert_eq!(keys(&parts), ["key-1"]);
    }

    #[test]
    fn an_event_recorded_but_unanswered_before_is_decided_again() {
        let unanswered = Seen {
            state: Some(false),
            ..seen()
        };
        assert!(matches!(
            decide_now(unanswered, "tem a camiseta azul?"),
            Decision::Answer(_)
        ));
    }

    #[test]
    fn a_message_to_a_shop_that_is_gone_is_only_recorded() {
        let gone = Seen {
            shop: None,
            ..seen()
        };
        assert!(matches!(
            decide_now(gone, "quero falar com um atendente"),
            Decision::Record(Silent::NoShop)
        ));
    }

    #[test]
    fn a_customer_asking_for_a_person_is_handed_over_even_when_the_assistant_would_stay_quiet() {
        let paused_and_old = Seen {
            shop: Some(Merchant {
                ai_enabled: false,
                ..shop()
            }),
            conversation: Some(Conversation {
                needs_human: true,
                ..conversation()
            }),
            needs_reauth: true,
            ..seen()
        };
        let Decision::Handoff(message) = decide(
            paused_and_old,
            "Can I talk to a person?",
            &Came::default(),
            t(SENT),
            t("2026-11-28T05:00:00Z"),
        ) else {
            panic!("not handed over");
        };
        assert_eq!(message, "A person will answer soon.");
    }

    #[test]
    fn a_message_to_a_shop_with_the_assistant_off_is_not_answered() {
        let off = Seen {
            shop: Some(Merchant {
                ai_enabled: false,
                ..shop()
            }),
            ..seen()
        };
        assert!(matches!(
            decide_now(off, "tem a camiseta azul?"),
            Decision::Record(Silent::Quiet)
        ));
    }

    #[test]
    fn a_conversation_a_person_took_over_is_not_answered() {
        let human = Seen {
            conversation: Some(Conversation {
                needs_human: true,
                ..conversation()
            }),
            ..seen()
        };
        assert!(matches!(
            decide_now(human, "tem a camiseta azul?"),
            Decision::Record(Silent::Quiet)
        ));
    }

    #[test]
    fn a_paused_conversation_is_not_answered_until_the_pause_ends() {
        let paused = |until: &str| Seen {
            conversation: Some(Conversation {
                paused_until: Some(t(until)),
                ..conversation()
            }),
            ..seen()
        };
        assert!(matches!(
            decide_now(paused("2026-11-26T17:00:00Z"), "tem a camiseta azul?"),
            Decision::Record(Silent::Quiet)
        ));
        assert!(matches!(
            decide_now(paused(NOW), "tem a camiseta azul?"),
            Decision::Answer(_)
        ));
    }

    #[test]
    fn a_message_without_text_is_not_answered() {
        for text in ["", " \n\t"] {
            assert!(
                matches!(decide_now(seen(), text), Decision::Record(Silent::Quiet)),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_message_older_than_24_hours_is_not_answered() {
        let at = t(SENT);
        let decide_at =
            |now: &str| decide(seen(), "tem a camiseta azul?", &Came::default(), at, t(now));
        assert!(matches!(
            decide_at("2026-11-27T05:00:01Z"),
            Decision::Expired
        ));
        // The window is 24 hours to the second.
        assert!(matches!(
            decide_at("2026-11-27T05:00:00Z"),
            Decision::Answer(_)
        ));
        // Expired wins over superseded: the dead letter says why it was never answered.
        let superseded = Seen {
            conversation: Some(Conversation {
                last_customer_message_at: Some(t("2026-11-26T06:00:00Z")),
                ..conversation()
            }),
            ..seen()
        };
        assert!(matches!(
            decide(
                superseded,
                "tem a camiseta azul?",
                &Came::default(),
                at,
                t("2026-11-28T00:00:00Z")
            ),
            Decision::Expired
        ));
    }

    #[test]
    fn an_old_message_the_assistant_would_not_answer_anyway_is_no_dead_letter() {
        let off = Seen {
            shop: Some(Merchant {
                ai_enabled: false,
                ..shop()
            }),
            ..seen()
        };
        assert!(matches!(
            decide(
                off,
                "tem a camiseta azul?",
                &Came::default(),
                t(SENT),
                t("2026-11-28T00:00:00Z")
            ),
            Decision::Record(Silent::Quiet)
        ));
    }

    #[test]
    fn a_message_superseded_by_a_newer_one_is_not_answered() {
        let newer = Seen {
            conversation: Some(Conversation {
                last_customer_message_at: Some(t("2026-11-26T05:00:30Z")),
                ..conversation()
            }),
            ..seen()
        };
        assert!(matches!(
            decide_now(newer, "tem a camiseta azul?"),
            Decision::Record(Silent::Superseded)
        ));
    }

    #[test]
    fn parts_an_earlier_run_stored_are_sent_without_asking_the_model_again() {
        let stored = Seen {
            parts: vec![
                part(0, OutboundStatus::Sent),
                part(1, OutboundStatus::Pending),
            ],
            needs_reauth: true,
            ..seen()
        };
        // Before the reauth check, as the parts' sends handle a disconnected account.
        let Decision::Resume(parts) = decide_now(stored, "tem a camiseta azul?") else {
            panic!("not resumed");
        };
        assert_eq!(keys(&parts), ["key-0", "key-1"]);
    }

    #[test]
    fn an_account_that_needs_its_owner_is_not_answered() {
        let reauth = Seen {
            needs_reauth: true,
            ..seen()
        };
        assert!(matches!(
            decide_now(reauth, "tem a camiseta azul?"),
            Decision::NeedsReauth
        ));
    }

    fn plain(text: &str) -> Answered {
        answered(&Answer::plain(text), &[], Lang::PtBr)
    }

    #[test]
    fn a_model_answer_with_the_handoff_marker_or_signal_hands_over() {
        assert_eq!(
            plain(&format!("Claro! {HANDOFF_MARKER}")),
            Answered::Handoff
        );
        let signal = Answer {
            text: "Claro!".into(),
            handoff: true,
            ..Default::default()
        };
        assert_eq!(answered(&signal, &[], Lang::PtBr), Answered::Handoff);
    }

    #[test]
    fn a_blank_model_answer_sends_nothing() {
        assert_eq!(plain("  \n "), Answered::Empty);
    }

    #[test]
    fn a_model_answer_becomes_its_reply_parts() {
        assert_eq!(
            plain(" Temos sim! "),
            Answered::Parts(vec![NewPart::text("Temos sim!")])
        );
    }

    #[test]
    fn a_tapped_product_goes_into_the_prompt_first() {
        let p = |sku: &str| products::Product {
            sku: sku.into(),
            name: sku.into(),
            description: String::new(),
            tags: String::new(),
            price: "1".parse().expect("decimal"),
            currency: None,
            stock: None,
            url: None,
            image_url: None,
        };
        let tapped = Seen {
            products: vec![p("A"), p("B")],
            tapped: Some(p("B")),
            ..seen()
        };
        let Decision::Answer(prompt) = decide_now(tapped, "Quero este") else {
            panic!("not answered");
        };
        let skus: Vec<&str> = prompt.products.iter().map(|p| p.sku.as_str()).collect();
        assert_eq!(skus, ["B", "A"]);
        assert_eq!(prompt.tapped.map(|t| t.sku), Some("B".to_owned()));

        // Products linked to a shared post or a ref come next, each once, before the search's.
        let linked = Seen {
            products: vec![p("A"), p("C"), p("B")],
            tapped: Some(p("B")),
            linked: vec![p("C"), p("B")],
            ..seen()
        };
        let Decision::Answer(prompt) = decide_now(linked, "Quero este") else {
            panic!("not answered");
        };
        let skus: Vec<&str> = prompt.products.iter().map(|p| p.sku.as_str()).collect();
        assert_eq!(skus, ["B", "C", "A"]);
    }

    #[test]
    fn a_story_mention_or_shared_post_without_text_is_answered_and_audio_alone_is_not() {
        let mention = Came {
            story_mention: true,
            ..Came::default()
        };
        let answer = decide(seen(), "", &mention, t(SENT), t(NOW));
        assert!(matches!(answer, Decision::Answer(_)), "{answer:?}");
        let audio = Came {
            other: vec!["audio".into()],
            ..Came::default()
        };
        assert!(matches!(
            decide(seen(), " ", &audio, t(SENT), t(NOW)),
            Decision::Record(Silent::Quiet)
        ));
    }

    #[test]
    fn the_ref_of_the_message_or_a_recent_one_of_the_conversation_goes_into_the_prompt() {
        let with_ref = |at: &str| Seen {
            conversation: Some(Conversation {
                referral_ref: Some("bio".into()),
                referral_at: Some(t(at)),
                ..conversation()
            }),
            ..seen()
        };
        let referral = |d: Decision| match d {
            Decision::Answer(p) => p.referral,
            other => panic!("not answered: {other:?}"),
        };
        // Recorded an hour before the message: still where the customer came from.
        assert_eq!(
            referral(decide_now(with_ref("2026-11-26T04:00:00Z"), "oi")).as_deref(),
            Some("bio")
        );
        // Older than the 24-hour window: forgotten.
        assert_eq!(
            referral(decide_now(with_ref("2026-11-25T04:00:00Z"), "oi")),
            None
        );
        // The message's own ref wins.
        let own = Came {
            referral: Some("natal".into()),
            ..Came::default()
        };
        assert_eq!(
            referral(decide(
                with_ref("2026-11-26T04:00:00Z"),
                "oi",
                &own,
                t(SENT),
                t(NOW)
            ))
            .as_deref(),
            Some("natal")
        );
    }

    fn job(event: &str) -> (InboundEventV1, Messaging) {
        let job = InboundEventV1 {
            merchant_id: uuid::Uuid::nil(),
            instagram_account_id: ACCOUNT.into(),
            event_id: "h:abc".into(),
            kind: EventKind::Message,
            entry_time_ms: None,
            received_at: t(SENT),
            event: RawValue::from_string(event.to_owned()).expect("json"),
            delivery: Default::default(),
        };
        let ev = serde_json::from_str(job.event.get()).expect("event");
        (job, ev)
    }

    #[test]
    fn a_customer_message_is_stored_with_its_mid_text_and_attachments() {
        let (j, ev) = job(
            r#"{"sender":{"id":1129842642640637},"message":{"mid":"m1","text":"oi","attachments":[{"type":"image"}]}}"#,
        );
        assert_eq!(
            incoming(&j, &ev),
            Some(Incoming {
                customer: "1129842642640637".into(),
                mid: "m1".into(),
                text: Some("oi".into()),
                attachments: serde_json::json!([{"type": "image"}]),
                tap: None,
                came: Came {
                    photos: vec![None],
                    ..Came::default()
                },
                reply_to: None,
            })
        );
    }

    #[test]
    fn a_postback_is_stored_as_its_title_or_else_its_payload() {
        let (j, ev) = job(r#"{"sender":{"id":"1"},"postback":{"mid":"p1","payload":"SIZES"}}"#);
        let msg = incoming(&j, &ev).expect("postback");
        assert_eq!(
            (msg.mid.as_str(), msg.text.as_deref()),
            ("p1", Some("SIZES"))
        );
        assert_eq!(msg.attachments, serde_json::json!([]));
        let (j, ev) =
            job(r#"{"sender":{"id":"1"},"postback":{"title":"Sizes","payload":"SIZES"}}"#);
        let msg = incoming(&j, &ev).expect("postback");
        // Without a mid of Meta's, the event id stands in.
        assert_eq!(
            (msg.mid.as_str(), msg.text.as_deref()),
            ("h:abc", Some("Sizes"))
        );
        assert_eq!(msg.tap.as_deref(), Some("SIZES"));
        // A tapped quick reply is a message with its title as text and its payload.
        let (j, ev) = job(
            r#"{"sender":{"id":"1"},"message":{"mid":"q1","text":"Boné","quick_reply":{"payload":"SKU:B-1"}}}"#,
        );
        let msg = incoming(&j, &ev).expect("quick reply");
        assert_eq!(
            (msg.text.as_deref(), msg.tap.as_deref()),
            (Some("Boné"), Some("SKU:B-1"))
        );
    }

    #[test]
    fn an_event_without_a_customer_message_stores_nothing() {
        for event in [
            r#"{"message":{"mid":"m1","text":"oi"}}"#.to_owned(),
            format!(r#"{{"sender":{{"id":"{ACCOUNT}"}},"message":{{"mid":"m1","text":"oi"}}}}"#),
            r#"{"sender":{"id":"1"},"read":{"mid":"m1"}}"#.to_owned(),
        ] {
            let (j, ev) = job(&event);
            assert_eq!(incoming(&j, &ev), None, "{event}");
        }
    }
}
