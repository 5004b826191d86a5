//! Instagram webhook payloads: the envelope, and what each event is.
//!
//! Parsing borrows from the request body: every event stays the exact bytes Meta sent
//! (`RawValue`), which is what the `h:` event ids hash and what the job carries on.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event_id;
use crate::ids::IdString;

/// The webhook fields an account is subscribed to, when it connects (SPEC §4.2) and when an
/// operator resubscribes it: the events below come from these.
pub const SUBSCRIBED_FIELDS: &str =
    "messages,messaging_postbacks,messaging_seen,message_reactions,messaging_referral,comments";

/// `{"object": "...", "entry": [...]}`; entries stay raw until routed.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    pub object: String,
    #[serde(borrow)]
    pub entry: Vec<&'a RawValue>,
}

/// One `entry[]`: the account it is for, and its events in one of the documented shapes.
#[derive(Debug, Deserialize)]
pub struct Entry<'a> {
    pub id: IdString,
    #[serde(default)]
    pub time: Option<serde_json::Number>,
    #[serde(borrow, default)]
    pub messaging: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    pub standby: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    pub changes: Option<Vec<&'a RawValue>>,
    /// Instagram Login's comment example puts `field`/`value` on the entry itself.
    #[serde(default)]
    pub field: Option<String>,
}

impl Entry<'_> {
    /// `entry.time` in milliseconds (messaging entries use ms, change entries seconds).
    pub fn time_ms(&self) -> Option<i64> {
        let t = self.time.as_ref()?.as_i64()?;
        Some(if t > 1_000_000_000_000 { t } else { t * 1000 })
    }
}

/// What an event is. Stable snake_case names: they travel in jobs and label metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Message,
    Echo,
    Deleted,
    Postback,
    Edit,
    Reaction,
    Read,
    Referral,
    Optin,
    Handover,
    Comment,
    Mention,
    Change,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Echo => "echo",
            EventKind::Deleted => "deleted",
            EventKind::Postback => "postback",
            EventKind::Edit => "edit",
            EventKind::Reaction => "reaction",
            EventKind::Read => "read",
            EventKind::Referral => "referral",
            EventKind::Optin => "optin",
            EventKind::Handover => "handover",
            EventKind::Comment => "comment",
            EventKind::Mention => "mention",
            EventKind::Change => "change",
        }
    }

    /// Whether answering the event may call the model: customer messages, postbacks and
    /// comments. The rest (echoes that confirm our sends, reads, reactions, deletions, …) are
    /// quick records.
    pub fn needs_model(self) -> bool {
        matches!(
            self,
            EventKind::Message | EventKind::Postback | EventKind::Comment
        )
    }
}

/// One `messaging[]` event, the parts the worker reads to answer or record it. Owned: the job
/// carries the event's raw bytes, and this is read from them (what the event *is* was decided
/// by [`classify_messaging`] in the ingress).
#[derive(Debug, Deserialize)]
pub struct Messaging {
    #[serde(default)]
    pub sender: Option<Party>,
    #[serde(default)]
    pub recipient: Option<Party>,
    /// Milliseconds.
    #[serde(default)]
    pub timestamp: Option<i64>,
    #[serde(default)]
    pub message: Option<Message>,
    #[serde(default)]
    pub postback: Option<Postback>,
    #[serde(default)]
    pub message_edit: Option<MessageEdit>,
    /// `messaging_referral`: the customer opened an ig.me link with a `ref`.
    #[serde(default)]
    pub referral: Option<Referral>,
    #[serde(default)]
    pub reaction: Option<Reaction>,
}

/// `sender` / `recipient`: an Instagram-scoped id.
#[derive(Debug, Deserialize)]
pub struct Party {
    pub id: IdString,
}

/// `message` (also of an echo or a deletion).
#[derive(Debug, Default, Deserialize)]
pub struct Message {
    #[serde(default)]
    pub mid: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub attachments: Option<serde_json::Value>,
    /// A tapped quick reply: the message's text is its title.
    #[serde(default)]
    pub quick_reply: Option<QuickReplyTap>,
    /// `{"mid"}` (an inline reply) or `{"story": {"id", "url"}}` (a reply to a story); kept as
    /// sent, see [`Message::story_reply`].
    #[serde(default)]
    pub reply_to: Option<serde_json::Value>,
    /// The link or ad a first message came from.
    #[serde(default)]
    pub referral: Option<Referral>,
}

impl Message {
    /// The story this message replies to, when it is a story reply.
    pub fn story_reply(&self) -> Option<StoryRef> {
        let story = self.reply_to.as_ref()?.get("story")?;
        serde_json::from_value(story.clone()).ok()
    }

    /// What the attachments are, in order (an unreadable item is `Other`).
    pub fn attached(&self) -> Vec<Attached> {
        self.attachments.as_ref().map(attached).unwrap_or_default()
    }
}

/// What stored or received `attachments` (a list, or one object) are, in order.
pub fn attached(attachments: &serde_json::Value) -> Vec<Attached> {
    let items = match attachments {
        serde_json::Value::Array(items) => items.as_slice(),
        one @ serde_json::Value::Object(_) => std::slice::from_ref(one),
        _ => &[],
    };
    items.iter().map(Attached::of).collect()
}

/// `reply_to.story`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StoryRef {
    #[serde(default)]
    pub id: Option<IdString>,
    #[serde(default)]
    pub url: Option<String>,
}

/// `referral` (of a `messaging_referral` event, or on a message): `ref` is the link's
/// parameter; `source` e.g. `ADS` or `IGME`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Referral {
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub ad_id: Option<IdString>,
}

/// `reaction`: `react` carries `reaction` and `emoji`; `unreact` only the `mid`.
#[derive(Debug, Clone, Deserialize)]
pub struct Reaction {
    /// The message reacted to (empty if Meta left it out: nothing to record then).
    #[serde(default)]
    pub mid: String,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub reaction: Option<String>,
    #[serde(default)]
    pub emoji: Option<String>,
}

impl Reaction {
    /// What the customer reacted with, `None` when they took it back.
    pub fn shown(&self) -> Option<&str> {
        if self.action.as_deref() == Some("unreact") {
            return None;
        }
        self.emoji
            .as_deref()
            .or(self.reaction.as_deref())
            .filter(|r| !r.is_empty())
    }
}

/// One attachment of a customer's message, as far as the answer cares. URLs are Meta's CDN
/// links: they are passed on, never fetched or copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    /// `image` (a photo, gif or sticker).
    Photo { url: Option<String> },
    /// `story_mention`: the customer mentioned the account in their story.
    StoryMention { url: Option<String> },
    /// `ig_post`, `share`, `ig_reel`, `reel`: a post or reel the customer shared.
    Post {
        media_id: Option<String>,
        caption: Option<String>,
        reel: bool,
    },
    /// Anything else (`video`, `audio`, `file`, …), by its type.
    Other(String),
}

#[derive(Deserialize, Default)]
struct AttachmentPayload {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    ig_post_media_id: Option<IdString>,
    #[serde(default)]
    reel_video_id: Option<IdString>,
    #[serde(default)]
    id: Option<IdString>,
}

impl Attached {
    fn of(item: &serde_json::Value) -> Attached {
        let kind = item
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let payload: AttachmentPayload = item
            .get("payload")
            .and_then(|p| serde_json::from_value(p.clone()).ok())
            .unwrap_or_default();
        let url = payload.url.filter(|u| !u.is_empty());
        match kind.as_str() {
            "image" => Attached::Photo { url },
            "story_mention" => Attached::StoryMention { url },
            "ig_post" | "share" | "media_share" | "ig_reel" | "reel" => Attached::Post {
                media_id: payload
                    .ig_post_media_id
                    .or(payload.reel_video_id)
                    .or(payload.id)
                    .map(|i| i.0),
                caption: payload.title.filter(|t| !t.trim().is_empty()),
                reel: kind.contains("reel"),
            },
            _ => Attached::Other(kind),
        }
    }
}

/// `message.quick_reply`.
#[derive(Debug, Default, Deserialize)]
pub struct QuickReplyTap {
    #[serde(default)]
    pub payload: Option<String>,
}

/// `postback`: a tapped button or ice breaker.
#[derive(Debug, Deserialize)]
pub struct Postback {
    #[serde(default)]
    pub mid: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub payload: Option<String>,
}

/// `message_edit`: the message's new text.
#[derive(Debug, Deserialize)]
pub struct MessageEdit {
    pub mid: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub num_edit: Option<i32>,
}

#[derive(Debug, Deserialize)]
struct Mid<'a> {
    // Cow: a mid with JSON escapes cannot be borrowed.
    #[serde(borrow, default)]
    mid: Option<Cow<'a, str>>,
    #[serde(default)]
    is_echo: bool,
    #[serde(default)]
    is_deleted: bool,
    #[serde(default)]
    is_self: bool,
    #[serde(default)]
    num_edit: Option<i64>,
}

/// Just enough of a messaging event to know what it is.
#[derive(Debug, Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    message: Option<Mid<'a>>,
    #[serde(borrow, default)]
    postback: Option<Mid<'a>>,
    #[serde(borrow, default)]
    message_edit: Option<Mid<'a>>,
    #[serde(default)]
    reaction: Option<IgnoredAny>,
    #[serde(default)]
    read: Option<IgnoredAny>,
    #[serde(default)]
    referral: Option<IgnoredAny>,
    #[serde(default)]
    optin: Option<IgnoredAny>,
    #[serde(default)]
    pass_thread_control: Option<IgnoredAny>,
    #[serde(default)]
    take_thread_control: Option<IgnoredAny>,
    #[serde(default)]
    request_thread_control: Option<IgnoredAny>,
}

/// How one event is to be handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// Route it: a kind and, for messages, the id built from Meta's own ids (`None`: use
    /// [`event_id::hashed`] of the raw bytes).
    Event { kind: EventKind, id: Option<String> },
    /// A test message the account sent itself (`is_self`).
    SelfTest,
    /// No key we know: counted and skipped.
    Unknown,
    /// Not a JSON object with the documented fields.
    Invalid,
}

/// Classifies one `messaging[]` event.
pub fn classify_messaging(raw: &RawValue) -> Classified {
    let Ok(p) = serde_json::from_str::<Probe<'_>>(raw.get()) else {
        return Classified::Invalid;
    };
    let with_mid = |kind: EventKind, prefix: &str, m: &Mid<'_>| Classified::Event {
        kind,
        id: m.mid.as_deref().map(|mid| event_id::with_mid(prefix, mid)),
    };
    if let Some(m) = &p.message {
        if m.is_self {
            return Classified::SelfTest;
        }
        return if m.is_deleted {
            with_mid(EventKind::Deleted, "deleted", m)
        } else if m.is_echo {
            with_mid(EventKind::Echo, "echo", m)
        } else {
            with_mid(EventKind::Message, "message", m)
        };
    }
    if let Some(m) = &p.postback {
        return with_mid(EventKind::Postback, "postback", m);
    }
    if let Some(m) = &p.message_edit {
        return Classified::Event {
            kind: EventKind::Edit,
            id: m.mid.as_deref().map(|mid| event_id::edit(mid, m.num_edit)),
        };
    }
    let kind = if p.reaction.is_some() {
        EventKind::Reaction
    } else if p.read.is_some() {
        EventKind::Read
    } else if p.referral.is_some() {
        EventKind::Referral
    } else if p.optin.is_some() {
        EventKind::Optin
    } else if p.pass_thread_control.is_some()
        || p.take_thread_control.is_some()
        || p.request_thread_control.is_some()
    {
        EventKind::Handover
    } else {
        return Classified::Unknown;
    };
    Classified::Event { kind, id: None }
}

#[derive(Deserialize)]
struct ChangeProbe {
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    value: Option<ValueProbe>,
}

#[derive(Deserialize)]
struct ValueProbe {
    #[serde(default)]
    id: Option<IdString>,
}

/// Classifies one `changes[]` item (or an entry that carries `field` itself). A comment's id
/// is `comment:{value.id}`: Meta's own id, so every delivery of one comment is one event.
pub fn classify_change(raw: &RawValue) -> Classified {
    match serde_json::from_str::<ChangeProbe>(raw.get()) {
        Ok(ChangeProbe {
            field: Some(f),
            value,
        }) => {
            let kind = match f.as_str() {
                "comments" | "live_comments" => EventKind::Comment,
                "mentions" => EventKind::Mention,
                _ => EventKind::Change,
            };
            let id = match (kind, value.and_then(|v| v.id)) {
                (EventKind::Comment, Some(id)) => Some(event_id::comment(id.as_str())),
                _ => None,
            };
            Classified::Event { kind, id }
        }
        Ok(ChangeProbe { field: None, .. }) => Classified::Unknown,
        Err(_) => Classified::Invalid,
    }
}

/// A `comments` change: someone commented on one of the account's posts or reels.
#[derive(Debug, Deserialize)]
pub struct CommentChange {
    pub value: CommentValue,
}

#[derive(Debug, Deserialize)]
pub struct CommentValue {
    pub id: IdString,
    #[serde(default)]
    pub from: Option<CommentAuthor>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub media: Option<CommentMedia>,
    /// Set on a reply within a comment's thread.
    #[serde(default)]
    pub parent_id: Option<IdString>,
}

#[derive(Debug, Deserialize)]
pub struct CommentAuthor {
    pub id: IdString,
    #[serde(default)]
    pub username: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CommentMedia {
    pub id: IdString,
    #[serde(default)]
    pub media_product_type: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("json")
    }

    #[test]
    fn every_documented_event_gets_its_kind_and_id() {
        let cases = [
            (
                r#"{"message":{"mid":"m1","text":"hi"}}"#,
                EventKind::Message,
                Some("message:m1"),
            ),
            (
                r#"{"message":{"mid":"m1","text":"hi","is_echo":true}}"#,
                EventKind::Echo,
                Some("echo:m1"),
            ),
            (
                r#"{"message":{"mid":"m1","is_deleted":true}}"#,
                EventKind::Deleted,
                Some("deleted:m1"),
            ),
            (
                r#"{"message":{"mid":"m1","is_unsupported":true}}"#,
                EventKind::Message,
                Some("message:m1"),
            ),
            (
                r#"{"postback":{"mid":"p1","title":"T","payload":"P"}}"#,
                EventKind::Postback,
                Some("postback:p1"),
            ),
            (
                r#"{"message_edit":{"mid":"m1","text":"x","num_edit":2}}"#,
                EventKind::Edit,
                Some("edit:m1:2"),
            ),
            (
                r#"{"reaction":{"mid":"m1","action":"react","reaction":"love"}}"#,
                EventKind::Reaction,
                None,
            ),
            (r#"{"read":{"mid":"m1"}}"#, EventKind::Read, None),
            (
                r#"{"referral":{"ref":"x","source":"ADS"}}"#,
                EventKind::Referral,
                None,
            ),
        ];
        for (json, kind, id) in cases {
            assert_eq!(
                classify_messaging(&raw(json)),
                Classified::Event {
                    kind,
                    id: id.map(str::to_owned)
                },
                "{json}"
            );
        }
        assert_eq!(
            classify_messaging(&raw(r#"{"message":{"mid":"m","is_self":true}}"#)),
            Classified::SelfTest
        );
        assert_eq!(
            classify_messaging(&raw(r#"{"sender":{"id":"1"},"new_thing":{}}"#)),
            Classified::Unknown
        );
        assert_eq!(classify_messaging(&raw("[1,2]")), Classified::Invalid);
        assert_eq!(
            classify_change(&raw(r#"{"field":"comments","value":{"id":"1"}}"#)),
            Classified::Event {
                kind: EventKind::Comment,
                id: Some("comment:1".into())
            }
        );
        assert_eq!(
            classify_change(&raw(r#"{"field":"comments","value":{"text":"x"}}"#)),
            Classified::Event {
                kind: EventKind::Comment,
                id: None
            }
        );
    }

    #[test]
    fn a_messaging_event_reads_its_parties_message_postback_and_edit() {
        let ev: Messaging = serde_json::from_str(
            r#"{"sender":{"id":1129842642640637},"recipient":{"id":"17841400538867190"},
                "timestamp":1762022388574,
                "message":{"mid":"m1","text":"hi","attachments":[{"type":"image"}]}}"#,
        )
        .expect("message");
        assert_eq!(
            ev.sender.map(|p| p.id.0).as_deref(),
            Some("1129842642640637")
        );
        assert_eq!(
            ev.recipient.map(|p| p.id.0).as_deref(),
            Some("17841400538867190")
        );
        assert_eq!(ev.timestamp, Some(1_762_022_388_574));
        let m = ev.message.expect("message");
        assert_eq!(
            (m.mid.as_deref(), m.text.as_deref()),
            (Some("m1"), Some("hi"))
        );
        assert_eq!(m.attachments, Some(serde_json::json!([{"type": "image"}])));
        assert!(m.quick_reply.is_none());
        let ev: Messaging = serde_json::from_str(
            r#"{"message":{"mid":"m2","text":"Size M","quick_reply":{"payload":"SIZE_M"}}}"#,
        )
        .expect("quick reply");
        let m = ev.message.expect("message");
        assert_eq!(
            m.quick_reply.and_then(|q| q.payload).as_deref(),
            Some("SIZE_M")
        );

        let ev: Messaging =
            serde_json::from_str(r#"{"postback":{"mid":"p1","title":"T","payload":"P"}}"#)
                .expect("postback");
        let p = ev.postback.expect("postback");
        assert_eq!(
            (p.mid.as_deref(), p.title.as_deref(), p.payload.as_deref()),
            (Some("p1"), Some("T"), Some("P"))
        );

        let ev: Messaging =
            serde_json::from_str(r#"{"message_edit":{"mid":"m1","text":"x","num_edit":2}}"#)
                .expect("edit");
        let e = ev.message_edit.expect("edit");
        assert_eq!(
            (e.mid.as_str(), e.text.as_deref(), e.num_edit),
            ("m1", Some("x"), Some(2))
        );
        // An edit names the message it edits.
        assert!(serde_json::from_str::<Messaging>(r#"{"message_edit":{"text":"x"}}"#).is_err());
    }

    #[test]
    fn story_replies_mentions_shared_posts_referrals_and_reactions_are_read() {
        let ev: Messaging = serde_json::from_str(
            r#"{"message":{"mid":"m1","text":"quanto?",
                "reply_to":{"story":{"url":"https://cdn/s1","id":"1799"}},
                "referral":{"ref":"natal24","source":"IGME","type":"OPEN_THREAD"},
                "attachments":[
                  {"type":"story_mention","payload":{"url":"https://cdn/m"}},
                  {"type":"ig_post","payload":{"url":"https://cdn/p","title":"Caneca azul","ig_post_media_id":17900000000000001}},
                  {"type":"ig_reel","payload":{"url":"https://cdn/r","title":"","reel_video_id":"555"}},
                  {"type":"image","payload":{"url":"https://cdn/i"}},
                  {"type":"audio","payload":{"url":"https://cdn/a"}},
                  "junk"]}}"#,
        )
        .expect("message");
        let m = ev.message.expect("message");
        assert_eq!(
            m.story_reply(),
            Some(StoryRef {
                id: Some(IdString("1799".into())),
                url: Some("https://cdn/s1".into())
            })
        );
        assert_eq!(
            m.referral.and_then(|r| r.reference).as_deref(),
            Some("natal24")
        );
        let attached = Message {
            attachments: m.attachments.clone(),
            ..Message::default()
        }
        .attached();
        assert_eq!(
            attached,
            vec![
                Attached::StoryMention {
                    url: Some("https://cdn/m".into())
                },
                Attached::Post {
                    media_id: Some("17900000000000001".into()),
                    caption: Some("Caneca azul".into()),
                    reel: false
                },
                Attached::Post {
                    media_id: Some("555".into()),
                    caption: None,
                    reel: true
                },
                Attached::Photo {
                    url: Some("https://cdn/i".into())
                },
                Attached::Other("audio".into()),
                Attached::Other(String::new()),
            ]
        );
        // An inline reply to a message is no story reply.
        let m: Message =
            serde_json::from_str(r#"{"mid":"m2","reply_to":{"mid":"m1"}}"#).expect("reply");
        assert_eq!(m.story_reply(), None);

        let ev: Messaging = serde_json::from_str(
            r#"{"sender":{"id":"1"},"referral":{"ref":"bio","source":"IGME","type":"OPEN_THREAD"}}"#,
        )
        .expect("referral");
        assert_eq!(
            ev.referral.and_then(|r| r.reference).as_deref(),
            Some("bio")
        );
        let ev: Messaging = serde_json::from_str(
            r#"{"reaction":{"mid":"m1","action":"react","reaction":"love","emoji":"\u2764\ufe0f"}}"#,
        )
        .expect("reaction");
        assert_eq!(
            ev.reaction.as_ref().and_then(Reaction::shown),
            Some("\u{2764}\u{fe0f}")
        );
        let ev: Messaging = serde_json::from_str(r#"{"reaction":{"mid":"m1","action":"unreact"}}"#)
            .expect("unreact");
        assert_eq!(ev.reaction.as_ref().and_then(Reaction::shown), None);
    }

    #[test]
    fn entries_accept_integer_ids_and_both_time_units() {
        let e: Entry<'_> =
            serde_json::from_str(r#"{"id":17841400538867190,"time":1762034000,"changes":[]}"#)
                .expect("entry");
        assert_eq!(e.id.as_str(), "17841400538867190");
        assert_eq!(e.time_ms(), Some(1_762_034_000_000));
        let e: Entry<'_> =
            serde_json::from_str(r#"{"id":"1","time":1762022388574,"messaging":[]}"#)
                .expect("entry");
        assert_eq!(e.time_ms(), Some(1_762_022_388_574));
    }
}
