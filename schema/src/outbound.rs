//! Reply parts and their sends (SPEC §5.3). Every function runs inside `Db::as_merchant`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::MerchantId;
use crate::prepared::PreparedExt;
use crate::schema::outbound_messages as om;

/// Instagram gets a reply in at most this many parts: up to three of text, then one message of
/// product cards.
pub const MAX_PARTS: usize = 4;

crate::text_enum::text_enum! {
    /// Where one reply part stands (`outbound_messages.status`).
    pub enum OutboundStatus {
        /// Not sent yet, or a send that certainly did not go out.
        Pending => "pending",
        /// Claimed for a send whose outcome is not known yet.
        Sending => "sending",
        /// Meta has it (its answer or the echo said so).
        Sent => "sent",
        /// Ended: two sends timed out and no echo confirmed either (never sent again).
        SendUnknown => "send_unknown",
        /// Ended unsent, for the reason `last_error` leads with.
        Failed => "failed",
    }
}

crate::text_enum::text_enum! {
    /// Where one part goes (`outbound_messages.channel`).
    pub enum Channel {
        /// The customer's DMs (`recipient.id`).
        Dm => "dm",
        /// The one private reply Meta allows to a comment (`recipient.comment_id`).
        PrivateReply => "private_reply",
        /// A reply under the comment, in public (`POST /{comment-id}/replies`).
        PublicReply => "public_reply",
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = om)]
pub struct Outbound {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub idempotency_key: String,
    pub recipient_igsid: String,
    pub part_index: i16,
    pub text: String,
    pub status: OutboundStatus,
    pub send_attempts: i32,
    pub meta_message_id: Option<String>,
    pub sending_started_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// For a part that ended, `{reason}: {error}` (see [`mark_dead`]).
    pub last_error: Option<String>,
    /// The Send API `message` object, for a part that is more than its `text` (cards, quick
    /// replies); `None` sends `{"text": text}`.
    pub payload: Option<serde_json::Value>,
    pub channel: Channel,
    /// The comment a private or public reply answers.
    pub comment_id: Option<String>,
}

/// One part of a reply, to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPart {
    /// What is sent for a text part; for a card message, a readable summary (1–1000 bytes).
    pub text: String,
    pub payload: Option<serde_json::Value>,
    /// `Dm` unless the part answers a comment (then `comment_id` names it).
    pub channel: Channel,
    pub comment_id: Option<String>,
}

impl NewPart {
    pub fn text(text: impl Into<String>) -> Self {
        NewPart {
            text: text.into(),
            payload: None,
            channel: Channel::Dm,
            comment_id: None,
        }
    }

    /// This part, answering `comment` on `channel` instead of going to the DMs.
    pub fn on_comment(self, channel: Channel, comment: &str) -> Self {
        NewPart {
            channel,
            comment_id: Some(comment.to_owned()),
            ..self
        }
    }
}

impl Outbound {
    /// Why the part ended `failed` or `send_unknown`: the dead-letter reason [`mark_dead`]
    /// wrote in front of the error.
    pub fn dead_reason(&self) -> Option<&str> {
        self.last_error.as_deref()?.split_once(": ").map(|(r, _)| r)
    }
}

/// The idempotency key of one part of the reply to one event.
pub fn part_key(event_id: &str, part: usize) -> String {
    format!("{event_id}#{part}")
}

/// The keys every part of the reply to one event may have.
fn part_keys(event_id: &str) -> Vec<String> {
    (0..MAX_PARTS).map(|i| part_key(event_id, i)).collect()
}

/// Inserts the parts of a reply and returns them in order; parts that exist already (a
/// re-run) keep their text and state. One statement: the no-op update makes the insert return
/// the existing row on a conflict.
pub async fn create_parts(
    mut conn: &AsyncPgConnection,
    merchant: MerchantId,
    conversation: Uuid,
    event_id: &str,
    account: &str,
    recipient: &str,
    parts: &[NewPart],
) -> QueryResult<Vec<Outbound>> {
    let rows: Vec<_> = parts
        .iter()
        .take(MAX_PARTS)
        .enumerate()
        .map(|(i, part)| {
            (
                om::merchant_id.eq(merchant.0),
                om::conversation_id.eq(conversation),
                om::idempotency_key.eq(part_key(event_id, i)),
                om::instagram_page_id.eq(account),
                om::recipient_igsid.eq(recipient),
                om::part_index.eq(i as i16),
                om::text.eq(&part.text),
                om::payload.eq(part.payload.as_ref()),
                om::channel.eq(part.channel),
                om::comment_id.eq(part.comment_id.as_deref()),
            )
        })
        .collect();
    let mut stored: Vec<Outbound> = diesel::insert_into(om::table)
        .values(rows)
        .on_conflict((om::merchant_id, om::idempotency_key))
        .do_update()
        .set(om::updated_at.eq(om::updated_at))
        .returning(Outbound::as_returning())
        .prepared()
        .get_results(&mut conn)
        .await?;
    stored.sort_by_key(|r| r.part_index);
    Ok(stored)
}

/// The parts already created for an event, in order.
pub async fn for_event(mut conn: &AsyncPgConnection, event_id: &str) -> QueryResult<Vec<Outbound>> {
    om::table
        .filter(om::idempotency_key.eq_any(part_keys(event_id)))
        .select(Outbound::as_select())
        .order(om::part_index)
        .prepared()
        .load(&mut conn)
        .await
}

pub async fn get(mut conn: &AsyncPgConnection, key: &str) -> QueryResult<Option<Outbound>> {
    om::table
        .filter(om::idempotency_key.eq(key))
        .select(Outbound::as_select())
        .first(&mut conn)
        .await
        .optional()
}

/// A part and the part before it (which must be out first), in one query.
pub async fn with_previous(
    mut conn: &AsyncPgConnection,
    key: &str,
) -> QueryResult<(Option<Outbound>, Option<Outbound>)> {
    let previous = key.rsplit_once('#').and_then(|(event, n)| {
        let n: usize = n.parse().ok()?;
        n.checked_sub(1).map(|p| part_key(event, p))
    });
    let keys: Vec<&str> = std::iter::once(key).chain(previous.as_deref()).collect();
    let rows: Vec<Outbound> = om::table
        .filter(om::idempotency_key.eq_any(keys))
        .select(Outbound::as_select())
        .prepared()
        .load(&mut conn)
        .await?;
    let mut this = None;
    let mut before = None;
    for row in rows {
        if row.idempotency_key == key {
            this = Some(row);
        } else {
            before = Some(row);
        }
    }
    Ok((this, before))
}

/// Claims the part for a send: `sending`, one more attempt, the time it started — only if the
/// row is still as the caller read it (status and attempt count). Copies of one part that read
/// it at the same time race here, and exactly one wins: under READ COMMITTED the others' UPDATE
/// waits for the winner's commit, then sees a row that no longer matches.
pub async fn mark_sending(
    mut conn: &AsyncPgConnection,
    key: &str,
    observed_status: OutboundStatus,
    observed_attempts: i32,
) -> QueryResult<bool> {
    let n = diesel::update(
        om::table
            .filter(om::idempotency_key.eq(key))
            .filter(om::status.eq(observed_status))
            .filter(om::send_attempts.eq(observed_attempts)),
    )
    .set((
        om::status.eq(OutboundStatus::Sending),
        om::send_attempts.eq(om::send_attempts + 1),
        om::sending_started_at.eq(diesel::dsl::now),
        om::updated_at.eq(diesel::dsl::now),
    ))
    .prepared()
    .execute(&mut conn)
    .await?;
    Ok(n == 1)
}

pub async fn mark_sent(
    mut conn: &AsyncPgConnection,
    key: &str,
    message_id: &str,
) -> QueryResult<()> {
    diesel::update(om::table.filter(om::idempotency_key.eq(key)))
        .set((
            om::status.eq(OutboundStatus::Sent),
            om::meta_message_id.eq(message_id),
            om::sent_at.eq(diesel::dsl::now),
            om::last_error.eq(None::<String>),
            om::updated_at.eq(diesel::dsl::now),
        ))
        .prepared()
        .execute(&mut conn)
        .await
        .map(|_| ())
}

/// Sets a status (`pending` after a failure that certainly did not send) with the error that
/// led to it.
pub async fn mark_status(
    mut conn: &AsyncPgConnection,
    key: &str,
    status: OutboundStatus,
    error: Option<&str>,
) -> QueryResult<()> {
    diesel::update(om::table.filter(om::idempotency_key.eq(key)))
        .set((
            om::status.eq(status),
            om::last_error.eq(error),
            om::updated_at.eq(diesel::dsl::now),
        ))
        .prepared()
        .execute(&mut conn)
        .await
        .map(|_| ())
}

/// Ends a part for good (`failed` or `send_unknown`). `last_error` becomes `{reason}: {error}`,
/// with the reason its dead letter carries, so the parts after it die for the same reason.
pub async fn mark_dead(
    mut conn: &AsyncPgConnection,
    key: &str,
    status: OutboundStatus,
    reason: &str,
    error: &str,
) -> QueryResult<()> {
    diesel::update(om::table.filter(om::idempotency_key.eq(key)))
        .set((
            om::status.eq(status),
            om::last_error.eq(format!("{reason}: {error}")),
            om::updated_at.eq(diesel::dsl::now),
        ))
        .prepared()
        .execute(&mut conn)
        .await
        .map(|_| ())
}

/// What an echo shows of the message it repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echoed<'a> {
    Text(&'a str),
    /// A template attachment and no text: what the echo of a card message looks like.
    Attachments,
    Nothing,
}

/// An echo of one of our sends? Matches Meta's message id, or else, on a part that is
/// `sending` or `sent` to the same customer (the echo can beat the API's answer), the same text
/// for a text echo, or the latest card message for an echo of attachments without text. A
/// match confirms the send.
pub async fn confirm_echo(
    mut conn: &AsyncPgConnection,
    recipient: &str,
    mid: &str,
    echoed: Echoed<'_>,
) -> QueryResult<bool> {
    let by_id = diesel::update(
        om::table
            .filter(om::recipient_igsid.eq(recipient))
            .filter(om::meta_message_id.eq(mid)),
    )
    .set(om::status.eq(OutboundStatus::Sent))
    .execute(&mut conn)
    .await?;
    if by_id > 0 {
        return Ok(true);
    }
    let unconfirmed = om::table
        .filter(om::recipient_igsid.eq(recipient))
        .filter(om::status.eq_any([
            OutboundStatus::Sending,
            OutboundStatus::Sent,
            OutboundStatus::SendUnknown,
        ]))
        .filter(
            om::meta_message_id
                .is_null()
                .or(om::meta_message_id.eq(mid)),
        )
        .order((om::created_at.desc(), om::part_index.desc()))
        .select(om::id);
    let candidate: Option<Uuid> = match echoed {
        Echoed::Text(text) => unconfirmed
            .filter(om::text.eq(text))
            .filter(om::payload.is_null().or(om::payload.has_key("text")))
            .first(&mut conn)
            .await
            .optional()?,
        Echoed::Attachments => unconfirmed
            .filter(om::payload.has_key("attachment"))
            .first(&mut conn)
            .await
            .optional()?,
        Echoed::Nothing => return Ok(false),
    };
    let Some(id) = candidate else {
        return Ok(false);
    };
    diesel::update(om::table.find(id))
        .set((
            om::status.eq(OutboundStatus::Sent),
            om::meta_message_id.eq(mid),
            om::sent_at.eq(diesel::dsl::now),
            om::updated_at.eq(diesel::dsl::now),
        ))
        .execute(&mut conn)
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::OutboundStatus;

    #[test]
    fn statuses_are_the_words_the_column_allows() {
        let words: Vec<&str> = OutboundStatus::ALL.iter().map(|s| s.as_str()).collect();
        crate::text_enum::tests::assert_checked("status", &words);
        for s in OutboundStatus::ALL {
            assert_eq!(s.as_str().parse::<OutboundStatus>(), Ok(*s));
        }
    }
}
