//! Prepared-statement reuse for the hot statements.
//!
//! Diesel reuses a connection's prepared statement only for queries it can prove have a
//! bounded set of SQL texts; UPDATEs, upserts, multi-row inserts and raw SQL are prepared anew
//! on every run, which costs an extra round trip and a parse and plan in Postgres each time.
//! [`Prepared`] marks a query whose text comes from a fixed, small set, so the connection's
//! statement cache keeps it (keyed by its SQL text and bind types, never by Rust type alone).
//! Use it only where the text cannot vary without bound: not on lists built from input.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::QueryResult;

#[derive(Debug, Clone)]
pub struct Prepared<Q>(Q);

/// `.prepared()` on any query.
pub trait PreparedExt: Sized {
    fn prepared(self) -> Prepared<Self> {
        Prepared(self)
    }
}

impl<Q> PreparedExt for Q {}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    // Diesel exposes this to backends only behind the feature named in Cargo.toml; the cache
    // key is still the full SQL text, so a different text is a different statement.
    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for Prepared<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}
