//! Conversations and their messages. Every function runs inside [`crate::Db::as_merchant`].

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::schema::conversations;

/// Deletes every conversation of one connected account (messages and outbound rows go with
/// them, by cascade). Returns how many conversations went.
pub async fn delete_for_account(
    conn: &mut AsyncPgConnection,
    instagram_page_id: &str,
) -> QueryResult<usize> {
    diesel::delete(
        conversations::table.filter(conversations::instagram_page_id.eq(instagram_page_id)),
    )
    .execute(conn)
    .await
}

/// Deletes every conversation with one customer (Instagram-scoped id).
pub async fn delete_for_customer(
    conn: &mut AsyncPgConnection,
    customer_igsid: &str,
) -> QueryResult<usize> {
    diesel::delete(conversations::table.filter(conversations::customer_igsid.eq(customer_igsid)))
        .execute(conn)
        .await
}
