//! The merchant's catalog. Every function runs inside [`crate::Db::as_merchant`].

use bigdecimal::BigDecimal;
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::MerchantId;
use crate::prepared::PreparedExt;
use crate::schema::products;

/// One catalog row: what an import validated, and what a read returns.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = products)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub description: String,
    /// Comma-separated words the merchant adds ("presente, cozinha"); may be empty.
    pub tags: String,
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
                    products::tags.eq(&p.tags),
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
                products::tags.eq(excluded(products::tags)),
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

/// Lowercase without the accents of Portuguese and Spanish, so `calça` matches `calca`: how
/// customers' words are compared with word lists here (Postgres folds the catalog itself,
/// with `unaccent`).
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

/// Words of a DM that never name a product: greetings, thanks, "do you have", informal
/// spellings (pt-BR, es, en). The merchant language's own stop words ("de", "um", "que") are
/// dropped by Postgres; these are what its lists lack, written folded.
const FILLER: &[&str] = &[
    // pt-BR
    "pra",
    "pro",
    "pras",
    "pros",
    "vc",
    "vcs",
    "voce",
    "voces",
    "ce",
    "oi",
    "ola",
    "bom",
    "boa",
    "dia",
    "tarde",
    "noite",
    "obrigado",
    "obrigada",
    "valeu",
    "por",
    "favor",
    "quero",
    "queria",
    "qro",
    "gostaria",
    "procuro",
    "procurando",
    "tem",
    "tens",
    "temos",
    "tenho",
    "vende",
    "vendem",
    "algum",
    "alguma",
    "alguns",
    "algumas",
    "tipo",
    "ai",
    "la",
    "aqui",
    "nao",
    "sim",
    "ja",
    "ate",
    "tambem",
    "tb",
    "tbm",
    "so",
    "sao",
    "eh",
    "ta",
    "to",
    // es
    "hola",
    "gracias",
    "buenos",
    "buenas",
    "quiero",
    "busco",
    "tienen",
    "tienes",
    "hay",
    "venden",
    "usted",
    "ustedes",
    // en
    "hi",
    "hello",
    "hey",
    "thanks",
    "thank",
    "please",
    "want",
    "looking",
    "sell",
    "have",
];

/// At most this many words of one message are searched.
pub const MAX_QUERY_WORDS: usize = 12;
/// Below this score (in [0, 1]) a product does not match: with no product above it the
/// answer is "no match". 0.1 keeps a product whose only link to the query is one of several
/// words in its description, and drops weaker ones.
pub const MIN_SCORE: f32 = 0.1;

/// The words of `text` that search looks for: folded, split at anything but letters and
/// digits, filler removed, first occurrence kept. Empty: the message names no product.
pub fn query_words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for w in fold(text).split(|c: char| !c.is_alphanumeric()) {
        if w.is_empty() || FILLER.contains(&w) || words.iter().any(|x| x == w) {
            continue;
        }
        words.push(w.to_owned());
        if words.len() == MAX_QUERY_WORDS {
            break;
        }
    }
    words
}

/// What a customer asked for.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// The customer's words as written.
    pub text: String,
    /// At most this many products.
    pub limit: i64,
    /// The query's embedding (unit length, the model the products were embedded with), when
    /// semantic search is on.
    pub embedding: Option<Vec<f32>>,
}

/// A product that matched, and how well (in [0, 1]).
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub product: Product,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SearchOutcome {
    /// Best first, never empty.
    Found(Vec<Hit>),
    /// Nothing in the catalog fits (or the query has no words worth searching).
    NoMatch,
}

impl SearchOutcome {
    pub fn into_products(self) -> Vec<Product> {
        match self {
            SearchOutcome::Found(hits) => hits.into_iter().map(|h| h.product).collect(),
            SearchOutcome::NoMatch => Vec::new(),
        }
    }
}

#[derive(QueryableByName)]
struct HitRow {
    #[diesel(embed)]
    product: Product,
    #[diesel(sql_type = diesel::sql_types::Float4)]
    score: f32,
}

/// The catalog's products that match `query`, best first (SQL function `search_products`,
/// migration `000007_catalog_relevance`, says how they are scored). Runs as the merchant's
/// context; the function reads that context and nothing else.
pub async fn search(
    mut conn: &AsyncPgConnection,
    query: &SearchQuery,
) -> QueryResult<SearchOutcome> {
    use diesel::sql_types::{Array, Float4, Integer, Nullable, Text};
    let words = query_words(&query.text);
    if words.is_empty() && query.embedding.is_none() {
        return Ok(SearchOutcome::NoMatch);
    }
    let limit = i32::try_from(query.limit.clamp(1, 1000)).unwrap_or(1000);
    // The language is the merchant's (its row is the only one this context sees).
    let rows: Vec<HitRow> = diesel::sql_query(
        "SELECT p.sku, p.name, p.description, p.tags, p.price, p.currency, p.stock, p.url,
                p.image_url, s.score
         FROM search_products($1,
                              (SELECT m.language FROM merchants m
                               WHERE m.id = NULLIF(current_setting('app.merchant_id', true), '')::uuid),
                              $2, $3, $4) WITH ORDINALITY AS s (product_id, score, n)
         JOIN products p ON p.id = s.product_id
         ORDER BY s.n",
    )
    .bind::<Array<Text>, _>(words)
    .bind::<Integer, _>(limit)
    .bind::<Float4, _>(MIN_SCORE)
    .bind::<Nullable<Array<Float4>>, _>(query.embedding.clone())
    .prepared()
    .load(&mut conn)
    .await?;
    if rows.is_empty() {
        return Ok(SearchOutcome::NoMatch);
    }
    Ok(SearchOutcome::Found(
        rows.into_iter()
            .map(|r| Hit {
                product: r.product,
                score: r.score,
            })
            .collect(),
    ))
}

/// What an embedding of a product is computed from.
pub fn embedding_text(name: &str, tags: &str, description: &str) -> String {
    let mut text = name.to_owned();
    for part in [tags, description] {
        if !part.trim().is_empty() {
            text.push_str(". ");
            text.push_str(part.trim());
        }
    }
    text
}

/// A product whose embedding is missing or was computed from other text (or another model).
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct StaleEmbedding {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub sku: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub tags: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub description: String,
    /// The key to store with the new embedding: the text it is computed from, now.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub key: String,
}

/// Up to `limit` products to embed (again) with `model`, by SKU.
pub async fn stale_embeddings(
    mut conn: &AsyncPgConnection,
    model: &str,
    limit: i64,
) -> QueryResult<Vec<StaleEmbedding>> {
    diesel::sql_query(
        "SELECT sku, name, tags, description,
                catalog_embedding_key($1, name, tags, description) AS key
         FROM products
         WHERE embedding_key IS DISTINCT FROM catalog_embedding_key($1, name, tags, description)
         ORDER BY sku LIMIT $2",
    )
    .bind::<diesel::sql_types::Text, _>(model)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(&mut conn)
    .await
}

/// Stores a product's embedding with the key of the text it was computed from; a product
/// whose text changed since keeps a different key and is embedded again. True when stored.
pub async fn store_embedding(
    mut conn: &AsyncPgConnection,
    sku: &str,
    key: &str,
    embedding: &[f32],
) -> QueryResult<bool> {
    let n = diesel::update(products::table.filter(products::sku.eq(sku)))
        .set((
            products::embedding.eq(Some(embedding.to_vec())),
            products::embedding_key.eq(Some(key)),
        ))
        .execute(&mut conn)
        .await?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::{fold, query_words};

    #[test]
    fn folding_strips_portuguese_and_spanish_accents_only() {
        assert_eq!(fold("áàâãäéèêëíìîïóòôõöúùûüçñ"), "aaaaaeeeeiiiiooooouuuucn");
        assert_eq!(fold("Calça AZUL-3 Ñandú"), "calca azul-3 nandu");
        // Nothing else changes: other letters, digits, punctuation, other scripts.
        assert_eq!(fold("ßøåæ œ ÿ 日本 12,5"), "ßøåæ œ ÿ 日本 12,5");
    }

    #[test]
    fn query_words_drop_filler_and_repeats_and_keep_sizes() {
        assert_eq!(
            query_words("Oi! Vcs têm camiseta PRETA tamanho M? camiseta"),
            ["camiseta", "preta", "tamanho", "m"]
        );
        assert!(query_words("oi, boa tarde! obrigado").is_empty());
        let many = "a b c d e f g h i j k l m n o";
        assert_eq!(query_words(many).len(), super::MAX_QUERY_WORDS);
    }
}
