//! Comments answered as private replies: the merchant's rules, and the products tied to a post
//! or an ig.me link's ref. Every function runs inside [`crate::Db::as_merchant`].

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::MerchantId;
use crate::products::{self, Product};
use crate::schema::{comment_rules as cr, product_links as pl};

/// Which comments get a private reply, and whether a public one follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = cr)]
pub struct CommentRule {
    pub enabled: bool,
    /// Empty: comments on any media.
    pub media_ids: Vec<String>,
    /// Empty: any comment; else one of these words must be in it (case and accents aside).
    pub triggers: Vec<String>,
    /// Posted once under the comment after the private reply went out.
    pub public_reply: Option<String>,
}

impl CommentRule {
    /// Whether a comment with `text` on `media` is to be answered.
    pub fn applies(&self, media: Option<&str>, text: &str) -> bool {
        if !self.enabled {
            return false;
        }
        if !self.media_ids.is_empty()
            && !media.is_some_and(|m| self.media_ids.iter().any(|i| i == m))
        {
            return false;
        }
        if self.triggers.is_empty() {
            return true;
        }
        let words: Vec<String> = products::fold(text)
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect();
        self.triggers.iter().any(|t| {
            let t = products::fold(t);
            let t: Vec<&str> = t.split_whitespace().collect();
            // A trigger of several words matches them in a row.
            !t.is_empty()
                && words
                    .windows(t.len())
                    .any(|w| w.iter().zip(&t).all(|(a, b)| a == b))
        })
    }
}

/// The merchant's rule; off when none was set.
pub async fn rule(mut conn: &AsyncPgConnection) -> QueryResult<CommentRule> {
    Ok(cr::table
        .select(CommentRule::as_select())
        .first(&mut conn)
        .await
        .optional()?
        .unwrap_or_default())
}

/// Stores the merchant's rule whole.
pub async fn set_rule(
    mut conn: &AsyncPgConnection,
    merchant: MerchantId,
    rule: &CommentRule,
) -> QueryResult<()> {
    diesel::insert_into(cr::table)
        .values((
            cr::merchant_id.eq(merchant.0),
            cr::enabled.eq(rule.enabled),
            cr::media_ids.eq(&rule.media_ids),
            cr::triggers.eq(&rule.triggers),
            cr::public_reply.eq(&rule.public_reply),
        ))
        .on_conflict(cr::merchant_id)
        .do_update()
        .set((
            cr::enabled.eq(rule.enabled),
            cr::media_ids.eq(&rule.media_ids),
            cr::triggers.eq(&rule.triggers),
            cr::public_reply.eq(&rule.public_reply),
            cr::updated_at.eq(diesel::dsl::now),
        ))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// What products are tied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A post or reel, by its media id.
    Media,
    /// An ig.me link's `ref`.
    Ref,
}

impl LinkKind {
    fn as_str(self) -> &'static str {
        match self {
            LinkKind::Media => "media",
            LinkKind::Ref => "ref",
        }
    }
}

/// Ties `skus` (in this order) to `key`, replacing what was tied to it; an empty list unties
/// everything. SKUs the catalog does not have are returned and nothing is stored.
pub async fn link(
    mut conn: &AsyncPgConnection,
    merchant: MerchantId,
    kind: LinkKind,
    key: &str,
    skus: &[String],
) -> QueryResult<Vec<String>> {
    let known: Vec<String> = products::with_skus(conn, skus)
        .await?
        .into_iter()
        .map(|p| p.sku)
        .collect();
    let unknown: Vec<String> = skus
        .iter()
        .filter(|s| !known.contains(s))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Ok(unknown);
    }
    diesel::delete(
        pl::table
            .filter(pl::kind.eq(kind.as_str()))
            .filter(pl::key.eq(key)),
    )
    .execute(&mut conn)
    .await?;
    let rows: Vec<_> = skus
        .iter()
        .enumerate()
        .map(|(i, sku)| {
            (
                pl::merchant_id.eq(merchant.0),
                pl::kind.eq(kind.as_str()),
                pl::key.eq(key),
                pl::sku.eq(sku),
                pl::position.eq(i16::try_from(i).unwrap_or(i16::MAX)),
            )
        })
        .collect();
    if !rows.is_empty() {
        diesel::insert_into(pl::table)
            .values(rows)
            .on_conflict_do_nothing()
            .execute(&mut conn)
            .await?;
    }
    Ok(Vec::new())
}

/// The products tied to `key`, in the order they were linked. One statement, so it can be
/// pipelined with the rest of a transaction's reads (and its COMMIT).
pub async fn linked(
    mut conn: &AsyncPgConnection,
    kind: LinkKind,
    key: &str,
) -> QueryResult<Vec<Product>> {
    use crate::schema::products as p;
    p::table
        .inner_join(pl::table.on(pl::merchant_id.eq(p::merchant_id).and(pl::sku.eq(p::sku))))
        .filter(pl::kind.eq(kind.as_str()))
        .filter(pl::key.eq(key))
        .order((pl::position, pl::sku))
        .select(Product::as_select())
        .load(&mut conn)
        .await
}

/// The products tied to what a DM came with: the posts or reels it `shared`, the `refs` it
/// carried, and the ref the conversation between `account` and `customer` recorded since
/// `since`. In link order; one statement, so it pipelines with the rest of a read.
pub async fn linked_to_message(
    mut conn: &AsyncPgConnection,
    shared: &[String],
    refs: &[String],
    (account, customer): (&str, &str),
    since: DateTime<Utc>,
) -> QueryResult<Vec<Product>> {
    use crate::schema::conversations as cv;
    use crate::schema::products as p;
    let recorded = cv::table
        .filter(cv::instagram_page_id.eq(account))
        .filter(cv::customer_igsid.eq(customer))
        .filter(cv::referral_at.ge(since))
        .select(cv::referral_ref.assume_not_null());
    p::table
        .inner_join(pl::table.on(pl::merchant_id.eq(p::merchant_id).and(pl::sku.eq(p::sku))))
        .filter(
            pl::kind
                .eq(LinkKind::Media.as_str())
                .and(pl::key.eq_any(shared))
                .or(pl::kind
                    .eq(LinkKind::Ref.as_str())
                    .and(pl::key.eq_any(refs).or(pl::key.eq_any(recorded)))),
        )
        .order((pl::position, pl::sku))
        .select(Product::as_select())
        .load(&mut conn)
        .await
        .map(|mut found: Vec<Product>| {
            // A product linked to two of them is shown once, where it comes first.
            let mut seen = std::collections::HashSet::new();
            found.retain(|p| seen.insert(p.sku.clone()));
            found
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(media: &[&str], triggers: &[&str]) -> CommentRule {
        CommentRule {
            enabled: true,
            media_ids: media.iter().map(|s| (*s).to_owned()).collect(),
            triggers: triggers.iter().map(|s| (*s).to_owned()).collect(),
            public_reply: None,
        }
    }

    #[test]
    fn a_rule_picks_media_and_whole_trigger_words() {
        assert!(rule(&[], &[]).applies(None, "lindo!"));
        assert!(!CommentRule::default().applies(None, "preço?"));
        assert!(rule(&["m1"], &[]).applies(Some("m1"), "x"));
        assert!(!rule(&["m1"], &[]).applies(Some("m2"), "x"));
        assert!(!rule(&["m1"], &[]).applies(None, "x"));
        let r = rule(&[], &["preço", "quero", "tem tamanho"]);
        assert!(r.applies(None, "PRECO?"));
        assert!(r.applies(None, "eu quero!!"));
        assert!(r.applies(None, "Tem tamanho M?"));
        assert!(!r.applies(None, "queromais"));
        assert!(!r.applies(None, "tamanho tem"));
        assert!(!r.applies(None, "lindo"));
    }
}
