//! Received webhook events: the worker's half of the dedupe. Every function runs inside
//! [`crate::Db::as_merchant`].

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::MerchantId;
use crate::prepared::PreparedExt;
use crate::schema::webhook_events as we;

/// One event to record.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub event_id: &'a str,
    pub kind: &'a str,
    pub instagram_page_id: &'a str,
    pub event_time: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
}

/// Records the event; `false` when `(merchant_id, event_id)` was already recorded (a duplicate
/// delivery that slipped past the ingress's claim).
pub async fn record(
    mut conn: &AsyncPgConnection,
    merchant: MerchantId,
    e: &NewEvent<'_>,
) -> QueryResult<bool> {
    let n = diesel::insert_into(we::table)
        .values(row(merchant, e))
        .on_conflict((we::merchant_id, we::event_id))
        .do_nothing()
        .prepared()
        .execute(&mut conn)
        .await?;
    Ok(n == 1)
}

/// The columns of one event row, as `insert_into(…).values` takes them.
type Row<'a> = (
    diesel::dsl::Eq<we::merchant_id, uuid::Uuid>,
    diesel::dsl::Eq<we::event_id, &'a str>,
    diesel::dsl::Eq<we::kind, &'a str>,
    diesel::dsl::Eq<we::instagram_page_id, &'a str>,
    diesel::dsl::Eq<we::event_time, Option<DateTime<Utc>>>,
    diesel::dsl::Eq<we::received_at, DateTime<Utc>>,
);

fn row<'a>(merchant: MerchantId, e: &NewEvent<'a>) -> Row<'a> {
    (
        we::merchant_id.eq(merchant.0),
        we::event_id.eq(e.event_id),
        we::kind.eq(e.kind),
        we::instagram_page_id.eq(e.instagram_page_id),
        we::event_time.eq(e.event_time),
        we::received_at.eq(e.received_at),
    )
}

/// Records the event as handled in one statement (the reply and the record commit together);
/// an unfinished record of it from an earlier run is marked handled.
pub async fn record_processed(
    mut conn: &AsyncPgConnection,
    merchant: MerchantId,
    e: &NewEvent<'_>,
) -> QueryResult<()> {
    diesel::insert_into(we::table)
        .values((row(merchant, e), we::processed_at.eq(diesel::dsl::now)))
        .on_conflict((we::merchant_id, we::event_id))
        .do_update()
        .set(we::processed_at.eq(diesel::dsl::now))
        .prepared()
        .execute(&mut conn)
        .await
        .map(|_| ())
}

/// `None`: never recorded; `Some(processed)` otherwise.
pub async fn state(mut conn: &AsyncPgConnection, event_id: &str) -> QueryResult<Option<bool>> {
    let at: Option<Option<DateTime<Utc>>> = we::table
        .filter(we::event_id.eq(event_id))
        .select(we::processed_at)
        .first(&mut conn)
        .await
        .optional()?;
    Ok(at.map(|p| p.is_some()))
}

pub async fn mark_processed(mut conn: &AsyncPgConnection, event_id: &str) -> QueryResult<()> {
    diesel::update(we::table.filter(we::event_id.eq(event_id)))
        .set(we::processed_at.eq(diesel::dsl::now))
        .prepared()
        .execute(&mut conn)
        .await
        .map(|_| ())
}

/// Retention: deletes at most `batch` of `merchant`'s events received before `cutoff` (oldest
/// first, through the (merchant_id, received_at) index, by row address), so that each statement
/// stays well inside the statement timeout however many there are. Fewer than `batch` deleted:
/// none are left.
pub async fn delete_received_before(
    mut conn: &AsyncPgConnection,
    merchant: MerchantId,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM webhook_events WHERE ctid = ANY(ARRAY(
           SELECT ctid FROM webhook_events
           WHERE merchant_id = $1 AND received_at < $2 ORDER BY received_at LIMIT $3))",
    )
    .bind::<diesel::sql_types::Uuid, _>(merchant.0)
    .bind::<diesel::sql_types::Timestamptz, _>(cutoff)
    .bind::<diesel::sql_types::BigInt, _>(batch)
    .execute(&mut conn)
    .await
}

/// Whether a recorded event was fully handled (a crash between recording and finishing leaves
/// it unprocessed, and the retry then finishes it).
pub async fn is_processed(conn: &AsyncPgConnection, event_id: &str) -> QueryResult<bool> {
    Ok(state(conn, event_id).await? == Some(true))
}
