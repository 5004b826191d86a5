//! The merchant's catalog. Every function runs inside [`crate::Db::as_merchant`].

use bigdecimal::BigDecimal;
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::MerchantId;
use crate::prepared::PreparedExt;
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
    mut conn: &AsyncPgConnection,
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
            .get_results(&mut conn)
            .await?;
        let new = inserted.iter().filter(|b| **b).count();
        counts.inserted += new;
        counts.updated += inserted.len() - new;
        progress(counts.inserted + counts.updated);
    }
    Ok(counts)
}

pub async fn list(mut conn: &AsyncPgConnection) -> QueryResult<Vec<Product>> {
    products::table
        .select(Product::as_select())
        .order(products::sku)
        .load(&mut conn)
        .await
}

/// The first `limit` products by SKU.
pub async fn list_first(mut conn: &AsyncPgConnection, limit: i64) -> QueryResult<Vec<Product>> {
    products::table
        .select(Product::as_select())
        .order(products::sku)
        .limit(limit)
        .load(&mut conn)
        .await
}

/// The products with these SKUs (a tapped card or quick reply names one), in SKU order.
pub async fn with_skus(mut conn: &AsyncPgConnection, skus: &[String]) -> QueryResult<Vec<Product>> {
    if skus.is_empty() {
        return Ok(Vec::new());
    }
    products::table
        .filter(products::sku.eq_any(skus))
        .select(Product::as_select())
        .order(products::sku)
        .load(&mut conn)
        .await
}

/// Lowercase without the accents of Portuguese and Spanish, so `calça` matches `calca`: what
/// catalog search compares. It must fold exactly as the `translate(lower(…), …)` of the
/// `search_name` and `search_description` columns (migration `000003_catalog_search`).
pub fn fold(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| match c {
            'á' | 'à' | 'â' | 'ã' | 'ä' => 'a',
            'é' | 'ê' | 'è' | 'ë' => 'e',
            'í' | 'ì' | 'î' | 'ï' => 'i',
            'ó' | 'ò' | 'ô' | 'õ' | 'ö' => 'o',
            'ú' | 'ù' | 'û' | 'ü' => 'u',
            'ç' => 'c',
            'ñ' => 'n',
            other => other,
        })
        .collect()
}

/// Products relevant to `words` (each already passed through [`fold`]): the most matches in
/// name and SKU (then description) first.
pub async fn search(
    mut conn: &AsyncPgConnection,
    words: &[String],
    limit: i64,
) -> QueryResult<Vec<Product>> {
    if words.is_empty() {
        return Ok(Vec::new());
    }
    // The same score expression filters, orders and limits in Postgres: a large catalog is
    // never loaded whole. `strpos` has no wildcards, so the words need no escaping.
    let score = || {
        diesel::dsl::sql::<diesel::sql_types::Integer>(
            "(SELECT coalesce(sum(CASE WHEN strpos(products.search_name, w) > 0 THEN 2
                                      WHEN strpos(products.search_description, w) > 0 THEN 1
                                      ELSE 0 END), 0)::int
              FROM unnest(",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(words.to_vec())
        .sql(") AS w)")
    };
    products::table
        .filter(score().gt(0))
        .order((score().desc(), products::sku))
        .limit(limit)
        .select(Product::as_select())
        .prepared()
        .load(&mut conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::fold;

    /// The letters the search columns' `translate` replaces, and what with.
    const FROM: &str = "áàâãäéèêëíìîïóòôõöúùûüçñ";
    const TO: &str = "aaaaaeeeeiiiiooooouuuucn";

    #[test]
    fn folding_matches_the_search_columns() {
        let migration = include_str!("../migrations/2026-11-26-000003_catalog_search/up.sql");
        assert_eq!(
            migration.matches(&format!("'{FROM}', '{TO}'")).count(),
            2,
            "both search columns translate these letters: fold() must change with them"
        );
        assert_eq!(fold(FROM), TO);
        assert_eq!(fold(&FROM.to_uppercase()), TO, "lower() comes first");
        assert_eq!(fold("Calça AZUL-3 Ñandú"), "calca azul-3 nandu");
        // Nothing else changes: other letters, digits, punctuation, other scripts.
        assert_eq!(fold("ßøåæ œ ÿ 日本 12,5"), "ßøåæ œ ÿ 日本 12,5");
    }
}
