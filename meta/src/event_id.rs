//! Every event id, the dedupe key of SPEC §4.1, is built here and nowhere else: the ingress
//! claims on it and the worker's UNIQUE `(merchant_id, event_id)` absorbs copies by it, so
//! the two must never disagree on a format.
//!
//! - Events Meta gives an id of its own: `message:{mid}`, `echo:{mid}`, `deleted:{mid}`,
//!   `postback:{mid}`, `edit:{mid}:{num_edit}` (an edit is a new event per edit) and
//!   `comment:{comment id}`.
//! - Everything else: `h:` + SHA-256(merchant id as text ‖ 0x00 ‖ the event's raw bytes as
//!   received), so a redelivery of the same bytes is the same event, per merchant.

use std::fmt::Display;

use ring::digest;
use serde_json::value::RawValue;

/// `{prefix}:{mid}`, for an event that carries Meta's message id.
pub(crate) fn with_mid(prefix: &str, mid: &str) -> String {
    format!("{prefix}:{mid}")
}

/// A customer message's id, `message:{mid}` (for tools that make jobs without a webhook).
pub fn message(mid: &str) -> String {
    with_mid("message", mid)
}

/// An echo's id, `echo:{mid}`.
pub fn echo(mid: &str) -> String {
    with_mid("echo", mid)
}

/// A comment's id, `comment:{id}`.
pub fn comment(id: &str) -> String {
    with_mid("comment", id)
}

/// `edit:{mid}:{num_edit}`; a missing count is edit 0.
pub(crate) fn edit(mid: &str, num_edit: Option<i64>) -> String {
    format!("edit:{mid}:{}", num_edit.unwrap_or(0))
}

/// `h:` + lowercase hex SHA-256(`merchant` as text ‖ 0x00 ‖ `raw`'s bytes), for an event
/// without an id of Meta's (see [`crate::webhook::Classified::Event`]).
pub fn hashed(merchant: impl Display, raw: &RawValue) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(merchant.to_string().as_bytes());
    ctx.update(&[0]);
    ctx.update(raw.get().as_bytes());
    format!("h:{}", hex::encode(ctx.finish().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_id_is_the_sha256_of_merchant_nul_and_the_raw_bytes() {
        let raw = RawValue::from_string(r#"{"read":{"mid":"m1"}}"#.to_owned()).expect("json");
        // printf '6f1d…3a4b\0{"read":{"mid":"m1"}}' | sha256sum
        assert_eq!(
            hashed("6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b", &raw),
            "h:19940f23ddfbbf9f4c2a8b9c04ecb2a2fd2703d01e28b2dc19258fcdecafc90d"
        );
        // Another merchant's copy of the same bytes is another event.
        assert_ne!(
            hashed("00000000-0000-0000-0000-000000000000", &raw),
            hashed("6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b", &raw)
        );
    }

    #[test]
    fn ids_from_meta_keep_their_documented_form() {
        assert_eq!(with_mid("message", "m1"), "message:m1");
        assert_eq!(edit("m1", Some(2)), "edit:m1:2");
        assert_eq!(edit("m1", None), "edit:m1:0");
    }
}
