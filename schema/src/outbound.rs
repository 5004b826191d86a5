//! Reply parts and their sends (SPEC §5.3). Every function runs inside `Db::as_merchant`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::MerchantId;
use crate::schema::outbound_messages as om;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = om)]
pub struct Outbound {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub idempotency_key: String,
    pub recipient_igsid: String,
    pub part_index: i16,
    pub text: String,
    pub status: String,
    pub send_attempts: i32,
    pub meta_message_id: Option<String>,
    pub sending_started_at: Option<DateTime<Utc>>,
}

/// The idempotency key of one part of the reply to one event.
pub fn part_key(event_id: &str, part: usize) -> String {
    format!("{event_id}#{part}")
}

/// Inserts the parts of a reply; parts that exist already (a re-run) keep their text.
pub async fn create_parts(
    conn: &mut AsyncPgConnection,
    merchant: MerchantId,
    conversation: Uuid,
    event_id: &str,
    account: &str,
    recipient: &str,
    parts: &[String],
) -> QueryResult<Vec<Outbound>> {
    let rows: Vec<_> = parts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            (
                om::merchant_id.eq(merchant.0),
                om::conversation_id.eq(conversation),
                om::idempotency_key.eq(part_key(event_id, i)),
                om::instagram_page_id.eq(account),
                om::recipient_igsid.eq(recipient),
                om::part_index.eq(i as i16),
                om::text.eq(text),
            )
        })
        .collect();
    diesel::insert_into(om::table)
        .values(rows)
        .on_conflict((om::merchant_id, om::idempotency_key))
        .do_nothing()
        .execute(conn)
        .await?;
    for_event(conn, event_id).await
}

/// The parts already created for an event, in order.
pub async fn for_event(conn: &mut AsyncPgConnection, event_id: &str) -> QueryResult<Vec<Outbound>> {
    om::table
        .filter(om::idempotency_key.like(format!(
            "{}#%",
            event_id.replace('%', "\\%").replace('_', "\\_")
        )))
        .select(Outbound::as_select())
        .order(om::part_index)
        .load(conn)
        .await
}

pub async fn get(conn: &mut AsyncPgConnection, key: &str) -> QueryResult<Option<Outbound>> {
    om::table
        .filter(om::idempotency_key.eq(key))
        .select(Outbound::as_select())
        .first(conn)
        .await
        .optional()
}

/// Claims the part for a send: `sending`, one more attempt, the time it started.
pub async fn mark_sending(conn: &mut AsyncPgConnection, key: &str) -> QueryResult<bool> {
    let n = diesel::update(
        om::table
            .filter(om::idempotency_key.eq(key))
            .filter(om::status.eq_any(["pending", "failed", "sending"])),
    )
    .set((
        om::status.eq("sending"),
        om::send_attempts.eq(om::send_attempts + 1),
        om::sending_started_at.eq(diesel::dsl::now),
        om::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await?;
    Ok(n == 1)
}

pub async fn mark_sent(
    conn: &mut AsyncPgConnection,
    key: &str,
    message_id: &str,
) -> QueryResult<()> {
    diesel::update(om::table.filter(om::idempotency_key.eq(key)))
        .set((
            om::status.eq("sent"),
            om::meta_message_id.eq(message_id),
            om::sent_at.eq(diesel::dsl::now),
            om::last_error.eq(None::<String>),
            om::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Sets a status (`pending` after a failure that certainly did not send, `failed`,
/// `send_unknown`) with the error that led to it.
pub async fn mark_status(
    conn: &mut AsyncPgConnection,
    key: &str,
    status: &str,
    error: Option<&str>,
) -> QueryResult<()> {
    diesel::update(om::table.filter(om::idempotency_key.eq(key)))
        .set((
            om::status.eq(status),
            om::last_error.eq(error),
            om::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// An echo of one of our sends? Matches Meta's message id, or the same text to the same
/// customer on a part that is `sending` or `sent` (the echo can beat the API's answer). A match
/// confirms the send.
pub async fn confirm_echo(
    conn: &mut AsyncPgConnection,
    recipient: &str,
    mid: &str,
    text: Option<&str>,
) -> QueryResult<bool> {
    let by_id = diesel::update(
        om::table
            .filter(om::recipient_igsid.eq(recipient))
            .filter(om::meta_message_id.eq(mid)),
    )
    .set(om::status.eq("sent"))
    .execute(conn)
    .await?;
    if by_id > 0 {
        return Ok(true);
    }
    let Some(text) = text else { return Ok(false) };
    let candidate: Option<Uuid> = om::table
        .filter(om::recipient_igsid.eq(recipient))
        .filter(om::text.eq(text))
        .filter(om::status.eq_any(["sending", "sent", "send_unknown"]))
        .filter(
            om::meta_message_id
                .is_null()
                .or(om::meta_message_id.eq(mid)),
        )
        .order(om::created_at.desc())
        .select(om::id)
        .first(conn)
        .await
        .optional()?;
    let Some(id) = candidate else {
        return Ok(false);
    };
    diesel::update(om::table.find(id))
        .set((
            om::status.eq("sent"),
            om::meta_message_id.eq(mid),
            om::sent_at.eq(diesel::dsl::now),
            om::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(true)
}
