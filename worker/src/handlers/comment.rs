//! A comment under one of the merchant's posts or reels, answered with the one private reply
//! Meta allows (`recipient.comment_id`, within 7 days) and, when the merchant set one, a
//! public reply under the comment after it.
//!
//! The order of work follows a DM's (see `inbound`): one read-only transaction, a decision
//! without I/O, the model outside any transaction, then the comment, the reply parts and the
//! event record in one write transaction, and the sends enqueued after the commit. The private
//! and the public reply are parts 0 and 1 of the event, so each is sent at most once, and the
//! public one ("see your DMs") waits for the private one and dies with it.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use diesel_async::AsyncPgConnection;
use igsales_jobs::{DeadReason, InboundEventV1};
use igsales_meta::webhook::CommentChange;
use igsales_schema::comments::{self, CommentRule, LinkKind};
use igsales_schema::conversations::{self, Direction, NewMessage};
use igsales_schema::events::{self, NewEvent};
use igsales_schema::merchants::{self, Merchant};
use igsales_schema::outbound::{self, Channel, NewPart, Outbound, OutboundStatus};
use igsales_schema::{DbError, MerchantId, accounts, products};

use crate::handlers::Shared;
use crate::handlers::inbound::{
    REPLIES, forget_answer, keep_answer, kept_answer, push_parts, query_embedding,
};
use crate::runtime::outcome::JobError;
use crate::sales::cards::{self, Lang};
use crate::sales::llm::ChatMessage;
use crate::sales::reply::{self, HANDOFF_MARKER};

/// Meta takes a comment's private reply for this long after the comment.
pub const PRIVATE_REPLY_WINDOW: ChronoDuration = ChronoDuration::days(7);

/// The comment, as the worker reads it.
#[derive(Debug)]
struct Comment {
    id: String,
    author: String,
    text: String,
    media: Option<String>,
}

/// `None` when the comment is not one to answer: no author, the account's own, or a reply
/// within a thread (Meta allows private replies to top-level comments).
fn comment(job: &InboundEventV1, change: CommentChange) -> Option<Comment> {
    let v = change.value;
    let author = v.from?.id.0;
    if author == job.instagram_account_id || v.parent_id.is_some() {
        return None;
    }
    Some(Comment {
        id: v.id.0,
        author,
        text: v.text.unwrap_or_default(),
        media: v.media.map(|m| m.id.0),
    })
}

/// What one read transaction saw.
struct Seen {
    state: Option<bool>,
    shop: Option<Merchant>,
    rule: CommentRule,
    products: Vec<products::Product>,
    parts: Vec<Outbound>,
    needs_reauth: bool,
}

#[derive(Debug)]
enum Decision {
    /// Handled before: push again the parts that never started.
    Resend(Vec<Outbound>),
    /// Stored, not answered (no shop, assistant off, outside the merchant's rule).
    Record,
    /// Older than Meta's 7 days: stored, and a dead letter `window_expired`.
    Expired,
    /// An earlier run stored the replies: push them.
    Resume(Vec<Outbound>),
    NeedsReauth,
    Answer(Box<(Merchant, Vec<products::Product>, Option<String>)>),
}

fn decide(seen: Seen, c: &Comment, at: DateTime<Utc>, now: DateTime<Utc>) -> Decision {
    if seen.state == Some(true) {
        let pending = seen
            .parts
            .into_iter()
            .filter(|p| p.status == OutboundStatus::Pending)
            .collect();
        return Decision::Resend(pending);
    }
    let Some(shop) = seen.shop else {
        return Decision::Record;
    };
    if !shop.ai_enabled || !seen.rule.applies(c.media.as_deref(), &c.text) {
        return Decision::Record;
    }
    if now - at > PRIVATE_REPLY_WINDOW {
        return Decision::Expired;
    }
    if !seen.parts.is_empty() {
        return Decision::Resume(seen.parts);
    }
    if seen.needs_reauth {
        return Decision::NeedsReauth;
    }
    Decision::Answer(Box::new((shop, seen.products, seen.rule.public_reply)))
}

/// What the model is told besides a DM's rules: where the words come from, and that the
/// answer is one message.
const COMMENT_NOTE: &str = "The customer wrote this as a public comment under the shop's post; your answer goes to them as one private message (Meta allows only one until they write back). Answer it in one or two short sentences and invite them to continue the conversation here. The products listed first are the ones shown in that post.";

pub async fn run(job: &InboundEventV1, shared: &Shared) -> Result<(), JobError> {
    let merchant = MerchantId(job.merchant_id);
    let change: CommentChange = serde_json::from_str(job.event.get())
        .map_err(|e| JobError::permanent(anyhow::anyhow!("unreadable comment: {e}")))?;
    let at = job
        .entry_time_ms
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(job.received_at);
    let new_event = NewEvent {
        event_id: &job.event_id,
        kind: job.kind.as_str(),
        instagram_page_id: &job.instagram_account_id,
        event_time: Some(at),
        received_at: job.received_at,
    };
    let Some(c) = comment(job, change) else {
        shared
            .db
            .as_merchant(merchant, async |conn: &AsyncPgConnection| {
                events::record_processed(conn, merchant, &new_event).await?;
                Ok::<_, DbError>(())
            })
            .await?;
        return Ok(());
    };
    let seen = read(shared, job, merchant, &c).await?;
    let account = job.instagram_account_id.as_str();
    let closes_at = at + PRIVATE_REPLY_WINDOW;
    let store = |parts: Vec<NewPart>, processed: bool| {
        store(
            shared, merchant, account, &new_event, &c, at, parts, processed,
        )
    };
    match decide(seen, &c, at, Utc::now()) {
        Decision::Resend(pending) => {
            push_parts(shared, merchant, account, &c.author, pending, closes_at).await
        }
        Decision::Record => {
            store(Vec::new(), true).await?;
            Ok(())
        }
        Decision::Expired => {
            store(Vec::new(), true).await?;
            metrics::counter!(REPLIES, "result" => "window_expired").increment(1);
            Err(JobError::Dead(
                DeadReason::WindowExpired,
                anyhow::anyhow!("the comment is older than the 7 days of its private reply"),
            ))
        }
        Decision::Resume(parts) => {
            push_parts(shared, merchant, account, &c.author, parts, closes_at).await
        }
        Decision::NeedsReauth => {
            store(Vec::new(), false).await?;
            metrics::counter!(REPLIES, "result" => "needs_reauth").increment(1);
            Err(JobError::Dead(
                DeadReason::NeedsReauth,
                anyhow::anyhow!("the account needs its owner to authorise it again"),
            ))
        }
        Decision::Answer(a) => {
            let (shop, products, public_reply) = *a;
            let kept = if job.delivery.is_fresh() {
                None
            } else {
                kept_answer(shared, merchant, &job.event_id).await
            };
            let from_kept = kept.is_some();
            let lang = Lang::from(shop.language);
            let answer = match kept {
                Some(answer) => answer,
                None => {
                    let mut messages =
                        reply::prompt(&shop.persona, &products, &[], &reply::Said::text(&c.text));
                    messages.insert(1, ChatMessage::new("system", COMMENT_NOTE));
                    let (structured, plain) = reply::variants(messages, None);
                    match crate::sales::guard::ask(
                        &shared.llm,
                        structured,
                        || plain.clone(),
                        &products,
                        lang,
                    )
                    .await
                    {
                        Ok(answer) => answer,
                        Err(e) => {
                            store(Vec::new(), false).await?;
                            return Err(e.into_job_error());
                        }
                    }
                }
            };
            // A request for a person is answered with the shop's hand-off message.
            let private = if answer.handoff || answer.text.contains(HANDOFF_MARKER) {
                Some(NewPart::text(shop.handoff_message.clone()))
            } else {
                cards::private_reply(&answer, &products)
            };
            let Some(private) = private else {
                metrics::counter!(REPLIES, "result" => "empty").increment(1);
                store(Vec::new(), true).await?;
                return Ok(());
            };
            let mut parts = vec![private.on_comment(Channel::PrivateReply, &c.id)];
            if let Some(text) = public_reply {
                parts.push(NewPart::text(text).on_comment(Channel::PublicReply, &c.id));
            }
            metrics::counter!(REPLIES, "result" => "comment_answered").increment(1);
            let rows = match store(parts, true).await {
                Ok(rows) => rows,
                Err(e) => {
                    if !from_kept {
                        keep_answer(shared, merchant, &job.event_id, &answer).await;
                    }
                    return Err(e);
                }
            };
            if from_kept {
                forget_answer(shared, merchant, &job.event_id).await;
            }
            push_parts(shared, merchant, account, &c.author, rows, closes_at).await
        }
    }
}

/// The one read-only transaction: the event's state, the shop, its rule, the products (those
/// linked to the post first, then what the comment's words find), earlier parts, reauth.
async fn read(
    shared: &Shared,
    job: &InboundEventV1,
    merchant: MerchantId,
    c: &Comment,
) -> Result<Seen, JobError> {
    let account = job.instagram_account_id.as_str();
    let query = products::SearchQuery {
        text: c.text.clone(),
        limit: reply::RELEVANT_PRODUCTS,
        embedding: query_embedding(shared, &c.text).await,
    };
    let media = c.media.clone().unwrap_or_default();
    let seen = shared
        .db
        .as_merchant_committed(merchant, async |conn: &AsyncPgConnection| {
            let found = async {
                if products::query_words(&c.text).is_empty() {
                    Ok(Vec::new())
                } else {
                    Ok(products::search(conn, &query).await?.into_products())
                }
            };
            let (state, shop, rule, linked, found, parts, reauth, done) = futures::try_join!(
                events::state(conn, &job.event_id),
                merchants::find(conn, merchant),
                comments::rule(conn),
                comments::linked(conn, LinkKind::Media, &media),
                found,
                outbound::for_event(conn, &job.event_id),
                accounts::needs_reauth(conn, account),
                igsales_schema::commit(conn),
            )?;
            let mut products = linked;
            for p in found {
                if !products.iter().any(|l| l.sku == p.sku) {
                    products.push(p);
                }
            }
            products.truncate(reply::RELEVANT_PRODUCTS as usize);
            let seen = Seen {
                state,
                shop,
                rule,
                products,
                parts,
                needs_reauth: reauth == Some(true),
            };
            Ok::<_, DbError>((seen, done))
        })
        .await?;
    Ok(seen)
}

/// The one write transaction: the conversation with the comment's author (a comment does not
/// open the DM window, so its clock stays), the comment as their message, the reply parts and
/// the event record (processed unless `processed` is false, so a retry still answers it).
#[allow(clippy::too_many_arguments)]
async fn store(
    shared: &Shared,
    merchant: MerchantId,
    account: &str,
    event: &NewEvent<'_>,
    c: &Comment,
    at: DateTime<Utc>,
    parts: Vec<NewPart>,
    processed: bool,
) -> Result<Vec<Outbound>, JobError> {
    let rows = shared
        .db
        .as_merchant_committed(merchant, async |conn: &AsyncPgConnection| {
            let conv = conversations::upsert(conn, merchant, account, &c.author, None).await?;
            let mid = format!("comment:{}", c.id);
            let message = NewMessage {
                conversation: conv.id,
                mid: &mid,
                direction: Direction::Inbound,
                author: conversations::Author::Customer,
                text: Some(c.text.as_str()),
                attachments: serde_json::json!([{
                    "type": "comment",
                    "payload": { "comment_id": c.id, "media_id": c.media },
                }]),
                reply_to: None,
                sent_at: at,
            };
            let (_, (), rows, done) = futures::try_join!(
                conversations::add_message(conn, merchant, &message),
                async {
                    if processed {
                        events::record_processed(conn, merchant, event).await
                    } else {
                        events::record(conn, merchant, event).await.map(|_| ())
                    }
                },
                async {
                    if parts.is_empty() {
                        Ok(Vec::new())
                    } else {
                        outbound::create_parts(
                            conn,
                            merchant,
                            conv.id,
                            event.event_id,
                            account,
                            &c.author,
                            &parts,
                        )
                        .await
                    }
                },
                igsales_schema::commit(conn),
            )?;
            Ok::<_, DbError>((rows, done))
        })
        .await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(rule: CommentRule) -> Seen {
        Seen {
            state: None,
            shop: Some(Merchant {
                id: uuid::Uuid::nil(),
                name: "Loja".into(),
                persona: String::new(),
                ai_enabled: true,
                handoff_message: "Já chamo alguém".into(),
                language: Default::default(),
            }),
            rule,
            products: Vec::new(),
            parts: Vec::new(),
            needs_reauth: false,
        }
    }

    fn on(media: &[&str]) -> CommentRule {
        CommentRule {
            enabled: true,
            media_ids: media.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn c(media: &str) -> Comment {
        Comment {
            id: "c1".into(),
            author: "u1".into(),
            text: "preço?".into(),
            media: Some(media.into()),
        }
    }

    #[test]
    fn only_comments_the_rule_covers_within_seven_days_are_answered() {
        let now = Utc::now();
        assert!(matches!(
            decide(seen(on(&[])), &c("m1"), now, now),
            Decision::Answer(_)
        ));
        assert!(matches!(
            decide(seen(CommentRule::default()), &c("m1"), now, now),
            Decision::Record
        ));
        assert!(matches!(
            decide(seen(on(&["m2"])), &c("m1"), now, now),
            Decision::Record
        ));
        assert!(matches!(
            decide(seen(on(&[])), &c("m1"), now - ChronoDuration::days(8), now),
            Decision::Expired
        ));
    }
}
