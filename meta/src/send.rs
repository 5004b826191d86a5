//! The Send API messages we send (text, a generic template of product cards, quick replies)
//! and Meta's limits on them. Builders cut what is too long on a character boundary;
//! [`OutgoingMessage::check`] runs before every send, so Meta never sees a message over a limit.
//!
//! Wire shapes (Messenger Platform conventions, which Instagram messaging follows):
//! `{"text": "…", "quick_replies": [{"content_type": "text", "title": "…", "payload": "…"}]}` and
//! `{"attachment": {"type": "template", "payload": {"template_type": "generic", "elements":
//! [{"title", "subtitle", "image_url", "default_action": {"type": "web_url", "url"}, "buttons":
//! [{"type": "web_url", "url", "title"}, {"type": "postback", "title", "payload"}]}]}}}`.

use serde::{Deserialize, Serialize};

/// Bytes of UTF-8 in one text message.
pub const MAX_TEXT_BYTES: usize = 1000;
/// Elements (cards) in one generic template.
pub const MAX_ELEMENTS: usize = 10;
/// Characters in an element's title, and in its subtitle.
pub const MAX_TITLE_CHARS: usize = 80;
pub const MAX_SUBTITLE_CHARS: usize = 80;
/// Buttons on one element.
pub const MAX_BUTTONS: usize = 3;
/// Characters in a button's title.
pub const MAX_BUTTON_TITLE_CHARS: usize = 20;
/// Quick replies on one message, and characters in each one's title.
pub const MAX_QUICK_REPLIES: usize = 13;
pub const MAX_QUICK_REPLY_TITLE_CHARS: usize = 20;
/// Bytes in a postback's or a quick reply's payload.
pub const MAX_PAYLOAD_BYTES: usize = 1000;

/// The `message` object of one Send API call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct OutgoingMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
    /// Shown under the newest message only, so they ride on a reply's last message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quick_replies: Vec<QuickReply>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Attachment {
    Template { payload: Template },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "template_type", rename_all = "snake_case")]
pub enum Template {
    Generic { elements: Vec<Element> },
}

/// One card of a generic template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Element {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtitle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<DefaultAction>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<Button>,
}

/// What tapping the card itself does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DefaultAction {
    WebUrl { url: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Button {
    /// Opens `url`.
    WebUrl { url: String, title: String },
    /// Comes back as a `postback` webhook carrying `payload`.
    Postback { title: String, payload: String },
}

/// A suggested answer; a tap arrives as a message with `quick_reply.payload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "content_type", rename_all = "snake_case")]
pub enum QuickReply {
    Text { title: String, payload: String },
}

/// The first limit a message breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("a message needs exactly one of text or attachment")]
    Shape,
    #[error("the text is empty or over {MAX_TEXT_BYTES} bytes")]
    Text,
    #[error("a generic template needs 1 to {MAX_ELEMENTS} elements")]
    Elements,
    #[error("a card title is empty or over {MAX_TITLE_CHARS} characters")]
    Title,
    #[error("a card subtitle is over {MAX_SUBTITLE_CHARS} characters")]
    Subtitle,
    #[error("a card has more than {MAX_BUTTONS} buttons")]
    Buttons,
    #[error("a button title is empty or over {MAX_BUTTON_TITLE_CHARS} characters")]
    ButtonTitle,
    #[error("a URL is not http(s)")]
    Url,
    #[error("more than {MAX_QUICK_REPLIES} quick replies")]
    QuickReplies,
    #[error("a quick reply title is empty or over {MAX_QUICK_REPLY_TITLE_CHARS} characters")]
    QuickReplyTitle,
    #[error("a payload is empty or over {MAX_PAYLOAD_BYTES} bytes")]
    Payload,
}

/// `text` cut to at most `max` characters, on a character boundary; whitespace at the cut end
/// is dropped.
pub fn cut_chars(text: &str, max: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => text[..end].trim_end().to_owned(),
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn cut_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn chars_within(text: &str, max: usize) -> bool {
    !text.trim().is_empty() && text.chars().count() <= max
}

fn payload_ok(payload: &str) -> bool {
    !payload.is_empty() && payload.len() <= MAX_PAYLOAD_BYTES
}

fn url_ok(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

impl OutgoingMessage {
    pub fn text(text: impl Into<String>) -> Self {
        OutgoingMessage {
            text: Some(text.into()),
            ..Default::default()
        }
    }

    /// Cards in one generic template; past [`MAX_ELEMENTS`] they are left out.
    pub fn cards(mut elements: Vec<Element>) -> Self {
        elements.truncate(MAX_ELEMENTS);
        OutgoingMessage {
            attachment: Some(Attachment::Template {
                payload: Template::Generic { elements },
            }),
            ..Default::default()
        }
    }

    /// Adds quick replies: past [`MAX_QUICK_REPLIES`] they are left out.
    pub fn with_quick_replies(mut self, mut replies: Vec<QuickReply>) -> Self {
        replies.truncate(MAX_QUICK_REPLIES);
        self.quick_replies = replies;
        self
    }

    /// The elements of a generic template, if this is one.
    pub fn elements(&self) -> &[Element] {
        match &self.attachment {
            Some(Attachment::Template {
                payload: Template::Generic { elements },
            }) => elements,
            None => &[],
        }
    }

    /// Meta's limits, all of them; the first one broken.
    pub fn check(&self) -> Result<(), LimitError> {
        match (&self.text, &self.attachment) {
            (Some(text), None) => {
                if text.trim().is_empty() || text.len() > MAX_TEXT_BYTES {
                    return Err(LimitError::Text);
                }
            }
            (None, Some(Attachment::Template { payload })) => match payload {
                Template::Generic { elements } => {
                    if elements.is_empty() || elements.len() > MAX_ELEMENTS {
                        return Err(LimitError::Elements);
                    }
                    for e in elements {
                        e.check()?;
                    }
                }
            },
            _ => return Err(LimitError::Shape),
        }
        if self.quick_replies.len() > MAX_QUICK_REPLIES {
            return Err(LimitError::QuickReplies);
        }
        for QuickReply::Text { title, payload } in &self.quick_replies {
            if !chars_within(title, MAX_QUICK_REPLY_TITLE_CHARS) {
                return Err(LimitError::QuickReplyTitle);
            }
            if !payload_ok(payload) {
                return Err(LimitError::Payload);
            }
        }
        Ok(())
    }
}

impl Element {
    /// A card titled `title` (cut to [`MAX_TITLE_CHARS`]); the rest is added with the setters.
    pub fn new(title: &str) -> Self {
        Element {
            title: cut_chars(title, MAX_TITLE_CHARS),
            subtitle: None,
            image_url: None,
            default_action: None,
            buttons: Vec::new(),
        }
    }

    pub fn subtitle(mut self, subtitle: &str) -> Self {
        let s = cut_chars(subtitle, MAX_SUBTITLE_CHARS);
        self.subtitle = (!s.is_empty()).then_some(s);
        self
    }

    /// Only http(s) URLs are kept.
    pub fn image(mut self, url: Option<&str>) -> Self {
        self.image_url = url.filter(|u| url_ok(u)).map(str::to_owned);
        self
    }

    /// Tapping the card opens `url` (http(s) only).
    pub fn opens(mut self, url: Option<&str>) -> Self {
        self.default_action = url
            .filter(|u| url_ok(u))
            .map(|u| DefaultAction::WebUrl { url: u.to_owned() });
        self
    }

    /// Adds a button while there is room for one (titles cut to [`MAX_BUTTON_TITLE_CHARS`]);
    /// a web_url button with a URL that is not http(s) is left out.
    pub fn button(mut self, button: Button) -> Self {
        if self.buttons.len() >= MAX_BUTTONS {
            return self;
        }
        let button = match button {
            Button::WebUrl { url, title } if url_ok(&url) => Button::WebUrl {
                url,
                title: cut_chars(&title, MAX_BUTTON_TITLE_CHARS),
            },
            Button::WebUrl { .. } => return self,
            Button::Postback { title, payload } => Button::Postback {
                title: cut_chars(&title, MAX_BUTTON_TITLE_CHARS),
                payload: cut_bytes(&payload, MAX_PAYLOAD_BYTES).to_owned(),
            },
        };
        self.buttons.push(button);
        self
    }

    fn check(&self) -> Result<(), LimitError> {
        if !chars_within(&self.title, MAX_TITLE_CHARS) {
            return Err(LimitError::Title);
        }
        if self
            .subtitle
            .as_deref()
            .is_some_and(|s| s.chars().count() > MAX_SUBTITLE_CHARS)
        {
            return Err(LimitError::Subtitle);
        }
        if self.buttons.len() > MAX_BUTTONS {
            return Err(LimitError::Buttons);
        }
        let urls = self.image_url.iter().chain(
            self.default_action
                .iter()
                .map(|DefaultAction::WebUrl { url }| url),
        );
        for url in urls {
            if !url_ok(url) {
                return Err(LimitError::Url);
            }
        }
        for b in &self.buttons {
            match b {
                Button::WebUrl { url, title } => {
                    if !url_ok(url) {
                        return Err(LimitError::Url);
                    }
                    if !chars_within(title, MAX_BUTTON_TITLE_CHARS) {
                        return Err(LimitError::ButtonTitle);
                    }
                }
                Button::Postback { title, payload } => {
                    if !chars_within(title, MAX_BUTTON_TITLE_CHARS) {
                        return Err(LimitError::ButtonTitle);
                    }
                    if !payload_ok(payload) {
                        return Err(LimitError::Payload);
                    }
                }
            }
        }
        Ok(())
    }
}

impl QuickReply {
    /// A text quick reply; the title is cut to [`MAX_QUICK_REPLY_TITLE_CHARS`] characters and
    /// the payload to [`MAX_PAYLOAD_BYTES`] bytes, on character boundaries. `None` when the
    /// title or the payload is blank.
    pub fn text(title: &str, payload: &str) -> Option<Self> {
        let title = cut_chars(title, MAX_QUICK_REPLY_TITLE_CHARS);
        let payload = cut_bytes(payload.trim(), MAX_PAYLOAD_BYTES);
        (!title.is_empty() && !payload.is_empty()).then(|| QuickReply::Text {
            title,
            payload: payload.to_owned(),
        })
    }

    pub fn title(&self) -> &str {
        match self {
            QuickReply::Text { title, .. } => title,
        }
    }

    pub fn payload(&self) -> &str {
        match self {
            QuickReply::Text { payload, .. } => payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(i: usize) -> Element {
        Element::new(&format!("Produto {i}"))
            .subtitle("R$ 89,90 · Em estoque")
            .image(Some("https://cdn.example/p.jpg"))
            .opens(Some("https://loja.example/p"))
            .button(Button::WebUrl {
                url: "https://loja.example/p".into(),
                title: "Ver produto".into(),
            })
            .button(Button::Postback {
                title: "Quero este".into(),
                payload: "WANT:P1".into(),
            })
    }

    #[test]
    fn cards_serialize_in_the_send_api_shape() {
        let m = OutgoingMessage::cards(vec![card(1)])
            .with_quick_replies(vec![QuickReply::text("Tem em azul?", "SAY").expect("qr")]);
        let v = serde_json::to_value(&m).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "attachment": {"type": "template", "payload": {"template_type": "generic", "elements": [{
                    "title": "Produto 1",
                    "subtitle": "R$ 89,90 · Em estoque",
                    "image_url": "https://cdn.example/p.jpg",
                    "default_action": {"type": "web_url", "url": "https://loja.example/p"},
                    "buttons": [
                        {"type": "web_url", "url": "https://loja.example/p", "title": "Ver produto"},
                        {"type": "postback", "title": "Quero este", "payload": "WANT:P1"}
                    ]
                }]}},
                "quick_replies": [{"content_type": "text", "title": "Tem em azul?", "payload": "SAY"}]
            })
        );
        let back: OutgoingMessage = serde_json::from_value(v).expect("reads back");
        assert_eq!(back, m);
        assert_eq!(
            serde_json::to_value(OutgoingMessage::text("oi")).expect("json"),
            serde_json::json!({"text": "oi"})
        );
        assert_eq!(m.check(), Ok(()));
    }

    #[test]
    fn builders_cut_on_character_boundaries_and_drop_what_does_not_fit() {
        let long = "Caneca de cerâmica esmaltada ".repeat(5);
        let e = Element::new(&long).subtitle(&"é".repeat(200));
        assert!(e.title.chars().count() <= MAX_TITLE_CHARS);
        assert!(long.trim().starts_with(&e.title));
        assert_eq!(e.subtitle.as_deref().map(|s| s.chars().count()), Some(80));
        let qr = QuickReply::text("Quanto custa o boné jeans azul?", "P").expect("qr");
        assert_eq!(qr.title(), "Quanto custa o boné");
        assert!(qr.title().chars().count() <= MAX_QUICK_REPLY_TITLE_CHARS);
        assert_eq!(QuickReply::text("  ", "P"), None);
        // 💙 is 4 bytes: the payload is cut before it, never inside it.
        let payload = format!("{}💙", "a".repeat(998));
        assert_eq!(
            QuickReply::text("x", &payload).expect("qr").payload().len(),
            998
        );
        let e = (0..5).fold(Element::new("t"), |e, i| {
            e.button(Button::Postback {
                title: format!("b{i}"),
                payload: "p".into(),
            })
        });
        assert_eq!(e.buttons.len(), MAX_BUTTONS);
        let e = Element::new("t")
            .image(Some("javascript:alert(1)"))
            .opens(None)
            .button(Button::WebUrl {
                url: "ftp://x".into(),
                title: "Ver".into(),
            });
        assert_eq!(
            (e.image_url, e.default_action, e.buttons.len()),
            (None, None, 0)
        );
        let m = OutgoingMessage::cards((0..12).map(card).collect());
        assert_eq!(m.elements().len(), MAX_ELEMENTS);
        let qrs = (0..20)
            .filter_map(|i| QuickReply::text(&format!("q{i}"), "p"))
            .collect();
        assert_eq!(
            OutgoingMessage::text("oi")
                .with_quick_replies(qrs)
                .quick_replies
                .len(),
            MAX_QUICK_REPLIES
        );
    }

    #[test]
    fn check_names_each_limit_a_hand_built_message_breaks() {
        let ok = OutgoingMessage::cards(vec![card(1)]);
        assert_eq!(ok.check(), Ok(()));
        let mut m = ok.clone();
        m.text = Some("and text".into());
        assert_eq!(m.check(), Err(LimitError::Shape));
        assert_eq!(OutgoingMessage::default().check(), Err(LimitError::Shape));
        assert_eq!(
            OutgoingMessage::text("a".repeat(1001)).check(),
            Err(LimitError::Text)
        );
        assert_eq!(OutgoingMessage::text("a".repeat(1000)).check(), Ok(()));
        let over = |f: &dyn Fn(&mut Element)| {
            let mut e = card(1);
            f(&mut e);
            OutgoingMessage {
                attachment: Some(Attachment::Template {
                    payload: Template::Generic { elements: vec![e] },
                }),
                ..Default::default()
            }
            .check()
        };
        assert_eq!(over(&|e| e.title = "x".repeat(81)), Err(LimitError::Title));
        assert_eq!(over(&|e| e.title = "x".repeat(80)), Ok(()));
        assert_eq!(
            over(&|e| e.subtitle = Some("x".repeat(81))),
            Err(LimitError::Subtitle)
        );
        assert_eq!(
            over(&|e| e.buttons = vec![e.buttons[1].clone(); 4]),
            Err(LimitError::Buttons)
        );
        assert_eq!(
            over(&|e| e.image_url = Some("data:x".into())),
            Err(LimitError::Url)
        );
        let too_many = OutgoingMessage {
            attachment: Some(Attachment::Template {
                payload: Template::Generic {
                    elements: vec![card(1); 11],
                },
            }),
            ..Default::default()
        };
        assert_eq!(too_many.check(), Err(LimitError::Elements));
        let mut m = OutgoingMessage::text("oi");
        m.quick_replies = vec![
            QuickReply::Text {
                title: "q".into(),
                payload: "p".into()
            };
            14
        ];
        assert_eq!(m.check(), Err(LimitError::QuickReplies));
        m.quick_replies = vec![QuickReply::Text {
            title: "x".repeat(21),
            payload: "p".into(),
        }];
        assert_eq!(m.check(), Err(LimitError::QuickReplyTitle));
        m.quick_replies = vec![QuickReply::Text {
            title: "q".into(),
            payload: String::new(),
        }];
        assert_eq!(m.check(), Err(LimitError::Payload));
    }
}
