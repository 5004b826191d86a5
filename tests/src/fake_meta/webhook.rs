//! Meta's side of webhooks: payloads as they appear on the wire (compact JSON, keys in Meta's
//! order, every non-ASCII character `\u`-escaped), their signatures, and delivery to the service.
//!
//! Builders return `serde_json::Value`s so tests can adjust them; [`envelope`] writes the final
//! body. Sign exactly the string that is sent (meta-platform.md §1.2).

use std::fmt::Write as _;
use std::time::Duration;

use ring::hmac;
use serde_json::{Value, json};

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Escapes every non-ASCII character as `\uXXXX` (lowercase hex, UTF-16 surrogate pairs above
/// U+FFFF), as Meta does before signing. ASCII is left as it is, so the input must already be
/// the compact JSON to send.
pub fn escape_non_ascii(compact_json: &str) -> String {
    let mut out = String::with_capacity(compact_json.len());
    let mut units = [0u16; 2];
    for c in compact_json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut units) {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    out
}

/// `sha256=<lowercase hex>` of HMAC-SHA256(`secret`, `body`): the `X-Hub-Signature-256` value.
pub fn signature_256(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex::encode(hmac::sign(&key, body)))
}

/// `sha1=<lowercase hex>`: the legacy `X-Hub-Signature` value.
pub fn signature_sha1(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    format!("sha1={}", hex::encode(hmac::sign(&key, body)))
}

/// `{"object":"instagram","entry":[…]}`, compact and escaped: the exact bytes to sign and send.
pub fn envelope(entries: &[Value]) -> String {
    let body = json!({ "object": "instagram", "entry": entries });
    let mut out = String::new();
    write_compact(&body, &mut out);
    escape_non_ascii(&out)
}

/// Key order of Meta's payloads (captured bodies start `{"object":…,"entry":[{"time":…,"id":…,
/// "messaging":[{"sender":…`). serde_json's map sorts keys in this workspace, so the writer
/// reorders them; keys not listed follow, alphabetically.
const KEY_ORDER: &[&str] = &[
    "object",
    "entry",
    "time",
    "id",
    "messaging",
    "changes",
    "field",
    "value",
    "from",
    "media",
    "media_product_type",
    "parent_id",
    "sender",
    "recipient",
    "timestamp",
    "message",
    "postback",
    "read",
    "message_edit",
    "referral",
    "mid",
    "title",
    "payload",
    "action",
    "reaction",
    "emoji",
    "text",
    "num_edit",
    "ref",
    "source",
    "type",
    "is_echo",
    "is_deleted",
];

fn write_compact(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            let rank = |k: &str| {
                KEY_ORDER
                    .iter()
                    .position(|o| *o == k)
                    .unwrap_or(KEY_ORDER.len())
            };
            keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                write_compact(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_compact(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One `entry[]` item holding a `comments` change (IG Login's shape; `time` in seconds).
pub fn comment_entry(
    account_id: &str,
    time_s: i64,
    comment_id: &str,
    author: &str,
    media_id: &str,
    text: &str,
    parent_id: Option<&str>,
) -> Value {
    let mut value = json!({
        "from": { "id": author, "username": format!("user{author}") },
        "media": { "id": media_id, "media_product_type": "FEED" },
        "id": comment_id,
        "text": text,
    });
    if let Some(p) = parent_id {
        value["parent_id"] = json!(p);
    }
    json!({
        "id": account_id,
        "time": time_s,
        "changes": [{ "field": "comments", "value": value }],
    })
}

/// One `entry[]` item of messaging events; `time_ms` is when Meta sent it.
pub fn messaging_entry(account_id: &str, time_ms: i64, events: Vec<Value>) -> Value {
    json!({ "time": time_ms, "id": account_id, "messaging": events })
}

fn event(sender: &str, recipient: &str, ts_ms: i64, key: &str, body: Value) -> Value {
    let mut e = json!({
        "sender": { "id": sender },
        "recipient": { "id": recipient },
        "timestamp": ts_ms,
    });
    e[key] = body;
    e
}

/// A DM from `customer` to the business `account`.
pub fn text_message(customer: &str, account: &str, mid: &str, text: &str, ts_ms: i64) -> Value {
    event(
        customer,
        account,
        ts_ms,
        "message",
        json!({ "mid": mid, "text": text }),
    )
}

/// A DM from `customer` whose `message` is `fields` plus the `mid`: for the shapes below
/// (story replies and mentions, shared posts, photos, a first message's referral).
pub fn message_with(customer: &str, account: &str, mid: &str, fields: Value, ts_ms: i64) -> Value {
    let mut message = fields;
    message["mid"] = json!(mid);
    event(customer, account, ts_ms, "message", message)
}

/// `customer` replied with `text` to the account's story `story_id` (Meta gives its CDN URL).
pub fn story_reply(
    customer: &str,
    account: &str,
    mid: &str,
    text: &str,
    story_id: &str,
    ts_ms: i64,
) -> Value {
    message_with(
        customer,
        account,
        mid,
        json!({ "text": text, "reply_to": { "story": {
            "id": story_id,
            "url": format!("https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id={story_id}&signature=s"),
        }}}),
        ts_ms,
    )
}

/// `customer` mentioned the account in their story: a message with no text and a
/// `story_mention` attachment.
pub fn story_mention(customer: &str, account: &str, mid: &str, ts_ms: i64) -> Value {
    message_with(
        customer,
        account,
        mid,
        json!({ "attachments": [{ "type": "story_mention", "payload": {
            "url": format!("https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id={mid}&signature=s"),
        }}]}),
        ts_ms,
    )
}

/// `customer` shared the post `media_id` (its caption is the attachment's `title`).
pub fn shared_post(
    customer: &str,
    account: &str,
    mid: &str,
    media_id: &str,
    caption: &str,
    ts_ms: i64,
) -> Value {
    message_with(
        customer,
        account,
        mid,
        json!({ "attachments": [{ "type": "ig_post", "payload": {
            "url": format!("https://www.instagram.com/p/{media_id}/"),
            "title": caption,
            "ig_post_media_id": media_id,
        }}]}),
        ts_ms,
    )
}

/// `customer` sent a photo (at Meta's CDN `url`), with `text` or none.
pub fn photo(
    customer: &str,
    account: &str,
    mid: &str,
    text: Option<&str>,
    url: &str,
    ts_ms: i64,
) -> Value {
    let mut fields = json!({ "attachments": [{ "type": "image", "payload": { "url": url } }] });
    if let Some(t) = text {
        fields["text"] = json!(t);
    }
    message_with(customer, account, mid, fields, ts_ms)
}

/// A first message that came through an ig.me link or ad carrying `ref_`.
pub fn message_with_referral(
    customer: &str,
    account: &str,
    mid: &str,
    text: &str,
    ref_: &str,
    ts_ms: i64,
) -> Value {
    message_with(
        customer,
        account,
        mid,
        json!({ "text": text, "referral": {
            "ref": ref_, "source": "SHORTLINK", "type": "OPEN_THREAD",
        }}),
        ts_ms,
    )
}

/// A DM the business `account` sent to `customer` (including ones our own app sent).
pub fn echo(account: &str, customer: &str, mid: &str, text: &str, ts_ms: i64) -> Value {
    event(
        account,
        customer,
        ts_ms,
        "message",
        json!({ "mid": mid, "text": text, "is_echo": true }),
    )
}

/// The echo of a message with attachments and no text (a card message): Meta repeats the
/// attachments, a template as `{"type": "template", "payload": {…}}`.
pub fn echo_attachments(
    account: &str,
    customer: &str,
    mid: &str,
    attachments: Value,
    ts_ms: i64,
) -> Value {
    event(
        account,
        customer,
        ts_ms,
        "message",
        json!({ "mid": mid, "attachments": attachments, "is_echo": true }),
    )
}

/// `customer` unsent message `mid`.
pub fn deleted(customer: &str, account: &str, mid: &str, ts_ms: i64) -> Value {
    event(
        customer,
        account,
        ts_ms,
        "message",
        json!({ "mid": mid, "is_deleted": true }),
    )
}

/// An icebreaker or button tap.
pub fn postback(
    customer: &str,
    account: &str,
    mid: &str,
    title: &str,
    payload: &str,
    ts_ms: i64,
) -> Value {
    event(
        customer,
        account,
        ts_ms,
        "postback",
        json!({ "mid": mid, "title": title, "payload": payload }),
    )
}

/// `action` is `react` or `unreact`; an unreact carries neither `reaction` nor `emoji`, as
/// documented, whatever `emoji` says.
pub fn reaction(
    customer: &str,
    account: &str,
    mid: &str,
    action: &str,
    emoji: &str,
    ts_ms: i64,
) -> Value {
    let body = if action == "unreact" {
        json!({ "mid": mid, "action": action })
    } else {
        json!({ "mid": mid, "action": action, "reaction": "love", "emoji": emoji })
    };
    event(customer, account, ts_ms, "reaction", body)
}

/// `customer` saw message `mid` (`messaging_seen`).
pub fn read(customer: &str, account: &str, mid: &str, ts_ms: i64) -> Value {
    event(customer, account, ts_ms, "read", json!({ "mid": mid }))
}

/// `customer` edited message `mid` for the `num_edit`th time.
pub fn edit(
    customer: &str,
    account: &str,
    mid: &str,
    text: &str,
    num_edit: u32,
    ts_ms: i64,
) -> Value {
    event(
        customer,
        account,
        ts_ms,
        "message_edit",
        json!({ "mid": mid, "text": text, "num_edit": num_edit }),
    )
}

/// `customer` opened the thread through an ig.me link carrying `ref_`.
pub fn referral(customer: &str, account: &str, ref_: &str, ts_ms: i64) -> Value {
    event(
        customer,
        account,
        ts_ms,
        "referral",
        json!({ "ref": ref_, "source": "SHORTLINK", "type": "OPEN_THREAD" }),
    )
}

fn agent() -> ureq::Agent {
    crate::http::agent(DELIVERY_TIMEOUT)
}

/// POSTs `body` as Meta would, signed with `secret` in `X-Hub-Signature-256`. Returns the status
/// and body whatever the status; a transport failure (refused, timed out) is status 0 with the
/// error as the body, so tests can assert on slow or absent receivers.
pub fn deliver(url: &str, secret: &str, body: &str) -> (u16, String) {
    let signature = signature_256(secret, body.as_bytes());
    deliver_with_headers(url, body, &[("X-Hub-Signature-256", signature.as_str())])
}

/// [`deliver`] with the legacy `X-Hub-Signature` too, as Meta historically sent both.
pub fn deliver_with_sha1(url: &str, secret: &str, body: &str) -> (u16, String) {
    let sha256 = signature_256(secret, body.as_bytes());
    let sha1 = signature_sha1(secret, body.as_bytes());
    deliver_with_headers(
        url,
        body,
        &[
            ("X-Hub-Signature-256", sha256.as_str()),
            ("X-Hub-Signature", sha1.as_str()),
        ],
    )
}

/// POSTs `body` as JSON with exactly these extra headers (e.g. a wrong or missing signature).
pub fn deliver_with_headers(url: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = agent().post(url).header("Content-Type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    match request.send(body) {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let text = response.body_mut().read_to_string().unwrap_or_default();
            (status, text)
        }
        Err(e) => (0, format!("transport error: {e}")),
    }
}

/// What the verification handshake got back.
#[derive(Debug)]
pub struct Handshake {
    pub challenge: String,
    pub status: u16,
    pub body: String,
}

impl Handshake {
    /// Meta's rule: status 200 and the body is the challenge, byte for byte.
    pub fn passed(&self) -> bool {
        self.status == 200 && self.body == self.challenge
    }
}

/// Meta's subscription check: `GET url?hub.mode=subscribe&hub.challenge=<random int>&
/// hub.verify_token=…` (meta-platform.md §1.1).
pub fn verify_handshake(url: &str, verify_token: &str) -> Handshake {
    let challenge = random_challenge();
    let response = agent()
        .get(url)
        .query("hub.mode", "subscribe")
        .query("hub.challenge", &challenge)
        .query("hub.verify_token", verify_token)
        .call();
    let (status, body) = match response {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => (0, format!("transport error: {e}")),
    };
    Handshake {
        challenge,
        status,
        body,
    }
}

fn random_challenge() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 4];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    // Ten digits at most, never a leading zero (Meta's challenges are plain ints).
    (u32::from_be_bytes(bytes) % 2_000_000_000 + 100_000_000).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_bmp_and_astral_characters_in_lowercase() {
        assert_eq!(escape_non_ascii("äöå"), r"\u00e4\u00f6\u00e5");
        assert_eq!(escape_non_ascii("a💙b"), r"a\ud83d\udc99b");
        assert_eq!(escape_non_ascii(r#"{"a":"\n"}"#), r#"{"a":"\n"}"#);
    }

    #[test]
    fn unreact_has_no_reaction_or_emoji() {
        let e = reaction("1", "2", "m", "unreact", "❤️", 5);
        assert_eq!(e["reaction"], json!({ "mid": "m", "action": "unreact" }));
    }
}
