//! The merchant's catalog. Every function runs inside [`crate::Db::as_merchant`].

use bigdecimal::BigDecimal;
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::MerchantId;
use crate::schema::products;

/// One catalog row: what an import validated, and what a read returns.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = products)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub price: BigDecimal,
    pub currency: Option<String>,
    pub stock: Option<i32>,
    pub url: Option<String>,
    pub image_url: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UpsertCounts {
    pub inserted: usize,
    pub updated: usize,
}

/// Inserts or updates by SKU. Postgres caps a statement at 65535 bind parameters: rows go in
/// chunks far below that.
pub async fn upsert(
    conn: &mut AsyncPgConnection,
    merchant: MerchantId,
    rows: &[Product],
    mut progress: impl FnMut(usize),
) -> QueryResult<UpsertCounts> {
    const CHUNK: usize = 1000;
    let mut counts = UpsertCounts::default();
    for chunk in rows.chunks(CHUNK) {
        let values: Vec<_> = chunk
            .iter()
            .map(|p| {
                (
                    products::merchant_id.eq(merchant.0),
                    products::sku.eq(&p.sku),
                    products::name.eq(&p.name),
                    products::description.eq(&p.description),
                    products::price.eq(&p.price),
                    products::currency.eq(p.currency.as_deref()),
                    products::stock.eq(p.stock),
                    products::url.eq(p.url.as_deref()),
                    products::image_url.eq(p.image_url.as_deref()),
                )
            })
            .collect();
        // `xmax = 0` is true for a freshly inserted row and false for one the upsert updated.
        let inserted: Vec<bool> = diesel::insert_into(products::table)
            .values(values)
            .on_conflict((products::merchant_id, products::sku))
            .do_update()
            .set((
                products::name.eq(excluded(products::name)),
                products::description.eq(excluded(products::description)),
                products::price.eq(excluded(products::price)),
                products::currency.eq(excluded(products::currency)),
                products::stock.eq(excluded(products::stock)),
                products::url.eq(excluded(products::url)),
                products::image_url.eq(excluded(products::image_url)),
                products::updated_at.eq(diesel::dsl::now),
            ))
            .returning(diesel::dsl::sql::<diesel::sql_types::Bool>("xmax = 0"))
            .get_results(conn)
            .await?;
        let new = inserted.iter().filter(|b| **b).count();
        counts.inserted += new;
        counts.updated += inserted.len() - new;
        progress(counts.inserted + counts.updated);
    }
    Ok(counts)
}

pub async fn list(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Product>> {
    products::table
        .select(Product::as_select())
        .order(products::sku)
        .load(conn)
        .await
}
