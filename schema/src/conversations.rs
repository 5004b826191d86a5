//! Conversations and their messages. Every function runs inside [`crate::Db::as_merchant`].

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::MerchantId;
use crate::prepared::PreparedExt;
use crate::schema::{conversations, messages};

/// Deletes every conversation of one connected account (messages and outbound rows go with
/// them, by cascade). Returns how many conversations went.
pub async fn delete_for_account(
    mut conn: &AsyncPgConnection,
    instagram_page_id: &str,
) -> QueryResult<usize> {
    diesel::delete(
        conversations::table.filter(conversations::instagram_page_id.eq(instagram_page_id)),
    )
    .execute(&mut conn)
    .await
}

/// Deletes every conversation with one customer (Instagram-scoped id).
pub async fn delete_for_customer(
    mut conn: &AsyncPgConnection,
    customer_igsid: &str,
) -> QueryResult<usize> {
    diesel::delete(conversations::table.filter(conversations::customer_igsid.eq(customer_igsid)))
        .execute(&mut conn)
        .await
}

#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = conversations)]
pub struct Conversation {
    pub id: Uuid,
    pub needs_human: bool,
    pub paused_until: Option<DateTime<Utc>>,
    pub last_customer_message_at: Option<DateTime<Utc>>,
    /// The ref of the last ig.me link or ad the customer came through, and when.
    pub referral_ref: Option<String>,
    pub referral_at: Option<DateTime<Utc>>,
}

/// The conversation between an account and a customer, created on first contact. With
/// `customer_message_at`, the conversation's clocks move to that time, never backwards (events
/// may arrive out of order): the returned `last_customer_message_at` is later than it exactly
/// when a newer customer message was stored before.
pub async fn upsert(
    mut conn: &AsyncPgConnection,
    merchant: MerchantId,
    account: &str,
    customer: &str,
    customer_message_at: Option<DateTime<Utc>>,
) -> QueryResult<Conversation> {
    diesel::sql_query(
        "INSERT INTO conversations AS c
           (merchant_id, instagram_page_id, customer_igsid, last_customer_message_at, last_event_at)
         VALUES ($1, $2, $3, $4, $4)
         ON CONFLICT (merchant_id, instagram_page_id, customer_igsid) DO UPDATE SET
           last_customer_message_at =
             greatest(c.last_customer_message_at, excluded.last_customer_message_at),
           last_event_at = greatest(c.last_event_at, excluded.last_event_at),
           updated_at = now()
         RETURNING c.id, c.needs_human, c.paused_until, c.last_customer_message_at,
                   c.referral_ref, c.referral_at",
    )
    .bind::<diesel::sql_types::Uuid, _>(merchant.0)
    .bind::<diesel::sql_types::Text, _>(account)
    .bind::<diesel::sql_types::Text, _>(customer)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>, _>(customer_message_at)
    .prepared()
    .get_result(&mut conn)
    .await
}

/// The conversation between an account and a customer, if there is one.
pub async fn find(
    mut conn: &AsyncPgConnection,
    account: &str,
    customer: &str,
) -> QueryResult<Option<Conversation>> {
    conversations::table
        .filter(conversations::instagram_page_id.eq(account))
        .filter(conversations::customer_igsid.eq(customer))
        .select(Conversation::as_select())
        .first(&mut conn)
        .await
        .optional()
}

/// Refs longer than this are cut (Meta's own limit is about this size; the column checks it).
pub const MAX_REF_CHARS: usize = 1000;

/// Records the ref the customer came through `at`, unless a later one is already recorded
/// (a link's referral event and the first message's referral may arrive in either order).
pub async fn set_referral(
    mut conn: &AsyncPgConnection,
    id: Uuid,
    referral: &str,
    at: DateTime<Utc>,
) -> QueryResult<()> {
    let cut: String = referral.chars().take(MAX_REF_CHARS).collect();
    if cut.is_empty() {
        return Ok(());
    }
    diesel::update(
        conversations::table.find(id).filter(
            conversations::referral_at
                .is_null()
                .or(conversations::referral_at.le(at)),
        ),
    )
    .set((
        conversations::referral_ref.eq(cut),
        conversations::referral_at.eq(at),
        conversations::updated_at.eq(diesel::dsl::now),
    ))
    .execute(&mut conn)
    .await
    .map(|_| ())
}

/// Flags the conversation for a person; `true` only for the call that flipped it (so the
/// hand-off message goes out once).
pub async fn set_needs_human(mut conn: &AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    let n = diesel::update(
        conversations::table
            .find(id)
            .filter(conversations::needs_human.eq(false)),
    )
    .set((
        conversations::needs_human.eq(true),
        conversations::updated_at.eq(diesel::dsl::now),
    ))
    .execute(&mut conn)
    .await?;
    Ok(n == 1)
}

/// A person answered from the Instagram app: the assistant stays quiet until `until`.
pub async fn pause(
    mut conn: &AsyncPgConnection,
    id: Uuid,
    until: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(conversations::table.find(id))
        .set((
            conversations::paused_until.eq(until),
            conversations::updated_at.eq(diesel::dsl::now),
        ))
        .execute(&mut conn)
        .await
        .map(|_| ())
}

/// Hands the conversation back to the assistant: clears `needs_human` and any pause.
pub async fn resume(mut conn: &AsyncPgConnection, customer: &str) -> QueryResult<usize> {
    diesel::update(conversations::table.filter(conversations::customer_igsid.eq(customer)))
        .set((
            conversations::needs_human.eq(false),
            conversations::paused_until.eq(None::<DateTime<Utc>>),
            conversations::updated_at.eq(diesel::dsl::now),
        ))
        .execute(&mut conn)
        .await
}

crate::text_enum::text_enum! {
    /// Which way a message went (`messages.direction`).
    pub enum Direction {
        /// From the customer.
        Inbound => "inbound",
        /// To the customer, from the assistant or a person in the Instagram app.
        Outbound => "outbound",
    }
}

crate::text_enum::text_enum! {
    /// Who wrote a message (`messages.author`).
    pub enum Author {
        Customer => "customer",
        /// Our reply.
        Assistant => "assistant",
        /// A person answering from the Instagram app.
        Human => "human",
    }
}

/// One stored message.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub conversation: Uuid,
    pub mid: &'a str,
    pub direction: Direction,
    pub author: Author,
    pub text: Option<&'a str>,
    pub attachments: serde_json::Value,
    /// What the message replied to, as Meta sent it (`{"mid"}` or `{"story": {"id", "url"}}`).
    pub reply_to: Option<serde_json::Value>,
    pub sent_at: DateTime<Utc>,
}

pub async fn add_message(
    mut conn: &AsyncPgConnection,
    merchant: MerchantId,
    m: &NewMessage<'_>,
) -> QueryResult<bool> {
    let n = diesel::insert_into(messages::table)
        .values((
            messages::merchant_id.eq(merchant.0),
            messages::conversation_id.eq(m.conversation),
            messages::mid.eq(m.mid),
            messages::direction.eq(m.direction),
            messages::author.eq(m.author),
            messages::text.eq(m.text),
            messages::attachments.eq(&m.attachments),
            messages::reply_to.eq(&m.reply_to),
            messages::sent_at.eq(m.sent_at),
        ))
        .on_conflict((messages::merchant_id, messages::mid))
        .do_nothing()
        .prepared()
        .execute(&mut conn)
        .await?;
    Ok(n == 1)
}

/// The customer deleted a message: its text goes too.
pub async fn delete_message(mut conn: &AsyncPgConnection, mid: &str) -> QueryResult<()> {
    diesel::update(messages::table.filter(messages::mid.eq(mid)))
        .set((
            messages::is_deleted.eq(true),
            messages::text.eq(None::<String>),
            messages::attachments.eq(serde_json::json!([])),
            messages::updated_at.eq(diesel::dsl::now),
        ))
        .execute(&mut conn)
        .await
        .map(|_| ())
}

/// An edit replaces the text, unless a later edit is already stored.
pub async fn edit_message(
    mut conn: &AsyncPgConnection,
    mid: &str,
    text: &str,
    num_edit: i32,
) -> QueryResult<()> {
    diesel::update(
        messages::table
            .filter(messages::mid.eq(mid))
            .filter(messages::edit_count.lt(num_edit))
            .filter(messages::is_deleted.eq(false)),
    )
    .set((
        messages::text.eq(text),
        messages::edit_count.eq(num_edit),
        messages::updated_at.eq(diesel::dsl::now),
    ))
    .execute(&mut conn)
    .await
    .map(|_| ())
}

/// Reactions longer than this (an emoji sequence is a few code points) are cut.
pub const MAX_REACTION_CHARS: usize = 64;

/// The customer reacted to the message `mid` `at` (`None`: took the reaction back), unless a
/// later reaction or unreaction is already recorded (events may arrive out of order).
pub async fn react(
    mut conn: &AsyncPgConnection,
    mid: &str,
    reaction: Option<&str>,
    at: DateTime<Utc>,
) -> QueryResult<bool> {
    let reaction: Option<String> = reaction
        .map(|r| r.chars().take(MAX_REACTION_CHARS).collect::<String>())
        .filter(|r| !r.is_empty());
    let n = diesel::update(
        messages::table.filter(messages::mid.eq(mid)).filter(
            messages::reaction_at
                .is_null()
                .or(messages::reaction_at.le(at)),
        ),
    )
    .set((
        messages::reaction.eq(reaction),
        messages::reaction_at.eq(at),
        messages::updated_at.eq(diesel::dsl::now),
    ))
    .execute(&mut conn)
    .await?;
    Ok(n == 1)
}

/// One message of the history the model is shown.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct Past {
    pub author: Author,
    pub text: Option<String>,
    pub attachments: serde_json::Value,
    /// The customer's reaction to it.
    pub reaction: Option<String>,
    pub sent_at: DateTime<Utc>,
}

/// The last `limit` messages with text or attachments, oldest first, of the conversation
/// between an account and a customer, found by them (so it can be read in the same flight as
/// the conversation itself).
pub async fn recent_messages_with(
    mut conn: &AsyncPgConnection,
    account: &str,
    customer: &str,
    limit: i64,
) -> QueryResult<Vec<Past>> {
    let mut rows: Vec<Past> = messages::table
        .inner_join(conversations::table.on(conversations::id.eq(messages::conversation_id)))
        .filter(conversations::instagram_page_id.eq(account))
        .filter(conversations::customer_igsid.eq(customer))
        .filter(messages::is_deleted.eq(false))
        .filter(
            messages::text
                .is_not_null()
                .or(messages::attachments.ne(serde_json::json!([]))),
        )
        .order(messages::sent_at.desc())
        .limit(limit)
        .select((
            messages::author,
            messages::text,
            messages::attachments,
            messages::reaction,
            messages::sent_at,
        ))
        .load(&mut conn)
        .await?;
    rows.reverse();
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::{Author, Direction};

    #[test]
    fn directions_and_authors_are_the_words_the_columns_allow() {
        let words: Vec<&str> = Direction::ALL.iter().map(|d| d.as_str()).collect();
        crate::text_enum::tests::assert_checked("direction", &words);
        let words: Vec<&str> = Author::ALL.iter().map(|a| a.as_str()).collect();
        crate::text_enum::tests::assert_checked("author", &words);
        for d in Direction::ALL {
            assert_eq!(d.as_str().parse::<Direction>(), Ok(*d));
        }
        for a in Author::ALL {
            assert_eq!(a.as_str().parse::<Author>(), Ok(*a));
        }
    }
}
