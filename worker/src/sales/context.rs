//! What a customer's message came with, told to the model: the story it replies to or
//! mentions the shop in, the post or reel it shares (its caption, and the products linked to
//! it), the link or ad it came from (its `ref`), photos. Meta's CDN URLs are passed on, never
//! fetched or copied (Meta's rule for story media).

use igsales_meta::webhook::{self, Attached, Message};
use igsales_schema::conversations::Past;

use crate::sales::reply::Said;

/// A shared post's caption is cut to this many characters in the prompt.
const CAPTION_CHARS: usize = 300;
/// A ref is cut to this many characters in the prompt.
const REF_CHARS: usize = 100;

/// What came with one customer's message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Came {
    pub story_reply: bool,
    pub story_mention: bool,
    /// Shared posts and reels: caption (if any), and whether it is a reel.
    pub posts: Vec<(Option<String>, bool)>,
    /// Media ids of the shared posts: products the merchant linked to them are shown first.
    pub media_ids: Vec<String>,
    /// Photos, by their CDN URL when Meta gave one.
    pub photos: Vec<Option<String>>,
    /// Attachments the model cannot use (video, audio, file, …), by type.
    pub other: Vec<String>,
    /// The ref of the link or ad this message came from.
    pub referral: Option<String>,
}

impl Came {
    pub fn of(message: &Message) -> Self {
        let mut came = Came {
            story_reply: message.story_reply().is_some(),
            referral: message
                .referral
                .as_ref()
                .and_then(|r| r.reference.clone())
                .filter(|r| !r.trim().is_empty()),
            ..Came::default()
        };
        for a in message.attached() {
            match a {
                Attached::Photo { url } => came.photos.push(url),
                Attached::StoryMention { .. } => came.story_mention = true,
                Attached::Post {
                    media_id,
                    caption,
                    reel,
                } => {
                    came.media_ids.extend(media_id);
                    came.posts.push((caption, reel));
                }
                Attached::Other(kind) => came.other.push(kind),
            }
        }
        came
    }

    /// A message with no text is still answered when it came with one of these.
    pub fn answerable(&self) -> bool {
        self.story_reply || self.story_mention || !self.posts.is_empty() || !self.photos.is_empty()
    }

    /// Words the catalog search gets besides the text: the shared posts' captions.
    pub fn search_words(&self) -> String {
        self.posts
            .iter()
            .filter_map(|(caption, _)| caption.as_deref())
            .map(|c| cut(c, CAPTION_CHARS))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The customer's message for the prompt: `text`, notes on what came with it, and with
    /// `vision` the photos as image inputs. `referral` is the ref this conversation came
    /// through (the message's own, else one recorded recently).
    pub fn said<'a>(&self, text: &'a str, referral: Option<&str>, vision: bool) -> Said<'a> {
        let mut notes = Vec::new();
        if self.story_reply {
            notes.push(
                "The customer is replying to one of the shop's stories (you cannot see it)."
                    .to_owned(),
            );
        }
        if self.story_mention {
            notes.push(
                "The customer mentioned the shop in their own story: thank them for it.".to_owned(),
            );
        }
        for (caption, reel) in &self.posts {
            let what = if *reel { "a reel" } else { "a post" };
            notes.push(match caption {
                Some(c) => format!(
                    "The customer shared {what} with the caption \"{}\"; products linked to it, if any, are listed first in the catalog.",
                    cut(c, CAPTION_CHARS).replace('"', "'")
                ),
                None => format!("The customer shared {what}; products linked to it, if any, are listed first in the catalog."),
            });
        }
        if let Some(r) = referral {
            notes.push(format!(
                "The customer came through the shop's link or ad with ref \"{}\"; products tied to it, if any, are listed first in the catalog.",
                cut(r, REF_CHARS).replace('"', "'")
            ));
        }
        let urls: Vec<String> = self.photos.iter().flatten().cloned().collect();
        let seen = vision && !urls.is_empty();
        if !self.photos.is_empty() {
            notes.push(if seen {
                "The customer sent the attached photo(s): use what you see to find what they want, but products and prices still come only from the catalog.".to_owned()
            } else {
                "The customer sent a photo you cannot see: ask them to say in words what they are looking for.".to_owned()
            });
        }
        if !self.other.is_empty() {
            notes.push(format!(
                "The customer also sent something you cannot open ({}).",
                self.other
                    .iter()
                    .map(|k| if k.is_empty() {
                        "an attachment"
                    } else {
                        k.as_str()
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Said {
            text,
            notes,
            images: if seen { urls } else { Vec::new() },
        }
    }
}

fn cut(s: &str, chars: usize) -> String {
    s.chars().take(chars).collect()
}

/// One stored message as a turn of the history: its text, or what its attachments were, and
/// the customer's reaction to it. `None` when there is nothing to show.
pub fn history_line(p: &Past) -> Option<String> {
    let mut line = p
        .text
        .clone()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| {
            let described: Vec<String> = webhook::attached(&p.attachments)
                .into_iter()
                .map(|a| match a {
                    Attached::Photo { .. } => "[a photo]".to_owned(),
                    Attached::StoryMention { .. } => "[mentioned the shop in a story]".to_owned(),
                    Attached::Post {
                        caption: Some(c), ..
                    } => format!("[shared a post: {}]", cut(&c, CAPTION_CHARS)),
                    Attached::Post { .. } => "[shared a post]".to_owned(),
                    Attached::Other(k) if k == "template" => "[product cards]".to_owned(),
                    Attached::Other(k) if k.is_empty() => "[an attachment]".to_owned(),
                    Attached::Other(k) => format!("[a {k}]"),
                })
                .collect();
            (!described.is_empty()).then(|| described.join(" "))
        })?;
    if let Some(r) = &p.reaction {
        line.push_str(&format!("\n[the customer reacted {r} to this message]"));
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use igsales_schema::conversations::Author;

    use super::*;

    fn message(json: &str) -> Message {
        serde_json::from_str(json).expect("message")
    }

    #[test]
    fn a_story_mention_a_shared_post_a_ref_and_a_photo_become_notes() {
        let m = message(
            r#"{"mid":"m","attachments":[
                {"type":"story_mention","payload":{"url":"https://cdn/s"}},
                {"type":"ig_post","payload":{"url":"https://cdn/p","title":"Caneca \"azul\"","ig_post_media_id":"179"}},
                {"type":"image","payload":{"url":"https://cdn/i"}},
                {"type":"audio","payload":{"url":"https://cdn/a"}}],
                "referral":{"ref":"natal","source":"IGME"}}"#,
        );
        let came = Came::of(&m);
        assert!(came.answerable());
        assert_eq!(came.media_ids, vec!["179".to_owned()]);
        assert_eq!(came.referral.as_deref(), Some("natal"));
        assert_eq!(came.search_words(), "Caneca \"azul\"");
        let said = came.said("", came.referral.as_deref(), false);
        let notes = said.notes.join("\n");
        assert!(
            notes.contains("mentioned the shop in their own story"),
            "{notes}"
        );
        assert!(
            notes.contains("shared a post with the caption \"Caneca 'azul'\""),
            "{notes}"
        );
        assert!(notes.contains("ref \"natal\""), "{notes}");
        assert!(notes.contains("a photo you cannot see"), "{notes}");
        assert!(notes.contains("cannot open (audio)"), "{notes}");
        assert!(said.images.is_empty(), "no vision, no image input");
        let said = came.said("", None, true);
        assert_eq!(said.images, vec!["https://cdn/i".to_owned()]);
        assert!(said.notes.join("\n").contains("attached photo"));
    }

    #[test]
    fn a_story_reply_is_noted_and_plain_text_or_audio_alone_is_not_answerable() {
        let m = message(
            r#"{"mid":"m","text":"lindo","reply_to":{"story":{"id":"1","url":"https://cdn/s"}}}"#,
        );
        let came = Came::of(&m);
        assert!(came.story_reply && came.answerable());
        assert!(
            came.said("lindo", None, false).notes[0]
                .contains("replying to one of the shop's stories")
        );
        assert!(!Came::of(&message(r#"{"mid":"m","text":"oi"}"#)).answerable());
        assert!(
            !Came::of(&message(
                r#"{"mid":"m","attachments":[{"type":"audio","payload":{}}]}"#
            ))
            .answerable()
        );
        assert!(
            Came::of(&message(r#"{"mid":"m","text":"oi"}"#))
                .said("oi", None, true)
                .notes
                .is_empty()
        );
    }

    #[test]
    fn history_shows_attachments_and_reactions() {
        let past =
            |text: Option<&str>, attachments: serde_json::Value, reaction: Option<&str>| Past {
                author: Author::Assistant,
                text: text.map(str::to_owned),
                attachments,
                reaction: reaction.map(str::to_owned),
                sent_at: Utc::now(),
            };
        assert_eq!(
            history_line(&past(Some("Temos sim!"), serde_json::json!([]), Some("❤️"))).as_deref(),
            Some("Temos sim!\n[the customer reacted ❤️ to this message]")
        );
        assert_eq!(
            history_line(&past(
                None,
                serde_json::json!([{"type":"template","payload":{}}]),
                None
            ))
            .as_deref(),
            Some("[product cards]")
        );
        assert_eq!(
            history_line(&past(
                None,
                serde_json::json!([{"type":"image","payload":{"url":"u"}}]),
                None
            ))
            .as_deref(),
            Some("[a photo]")
        );
        assert_eq!(history_line(&past(None, serde_json::json!([]), None)), None);
    }
}
