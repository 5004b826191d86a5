//! Merchants (tenants). Every function runs inside [`crate::Db::as_merchant`].

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::MerchantId;
use crate::schema::merchants;

crate::text_enum::text_enum! {
    /// The locale a merchant sells in (`merchants.language`): labels, price format, search.
    /// The default is the column's: the shops igsales started with are Brazilian.
    #[derive(Default)]
    pub enum Language {
        #[default]
        PtBr => "pt-BR",
        Es => "es",
        En => "en",
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = merchants)]
pub struct Merchant {
    pub id: uuid::Uuid,
    pub name: String,
    pub persona: String,
    pub ai_enabled: bool,
    pub handoff_message: String,
    pub language: Language,
}

/// Creates the merchant whose context the transaction carries (RLS checks `id`).
pub async fn create(
    mut conn: &AsyncPgConnection,
    id: MerchantId,
    name: &str,
    persona: Option<&str>,
) -> QueryResult<()> {
    diesel::insert_into(merchants::table)
        .values((
            merchants::id.eq(id.0),
            merchants::name.eq(name),
            persona.map(|p| merchants::persona.eq(p)),
        ))
        .execute(&mut conn)
        .await
        .map(|_| ())
}

pub async fn find(mut conn: &AsyncPgConnection, id: MerchantId) -> QueryResult<Option<Merchant>> {
    merchants::table
        .find(id.0)
        .select(Merchant::as_select())
        .first(&mut conn)
        .await
        .optional()
}

/// The settings `merchant set` may change; `None` leaves a field as it is.
#[derive(Debug, Default, Clone, AsChangeset)]
#[diesel(table_name = merchants)]
pub struct MerchantChanges {
    pub persona: Option<String>,
    pub ai_enabled: Option<bool>,
    pub handoff_message: Option<String>,
    pub language: Option<Language>,
}

/// Applies `changes`; `false` when the merchant does not exist (or is not this context's).
pub async fn update(
    mut conn: &AsyncPgConnection,
    id: MerchantId,
    changes: &MerchantChanges,
) -> QueryResult<bool> {
    let n = diesel::update(merchants::table.find(id.0))
        .set((changes, merchants::updated_at.eq(diesel::dsl::now)))
        .execute(&mut conn)
        .await?;
    Ok(n == 1)
}

/// The merchant's language; `None` when the merchant does not exist (or is not this context's).
pub async fn language(
    mut conn: &AsyncPgConnection,
    id: MerchantId,
) -> QueryResult<Option<Language>> {
    merchants::table
        .find(id.0)
        .select(merchants::language)
        .first(&mut conn)
        .await
        .optional()
}
