//! The model's answer as a structure: the reply text, the SKUs to show as cards, quick-reply
//! suggestions and the hand-off signal.
//!
//! Asked for with OpenAI-compatible structured output, `response_format: {type: "json_schema",
//! json_schema: {name, strict: true, schema}}` (not a tool call: one answer, always in the same
//! shape, with no second round trip to return a tool result). A server that refuses the format
//! (HTTP 400 naming `response_format`/`json_schema`) is asked again in plain text; content that
//! is plain text is taken as the reply; content that is JSON but not of the schema is asked
//! again in plain text. Each fallback is counted in
//! `igsales_llm_structured_fallback_total{reason}` (`refused`, `plain_text`, `invalid_json`),
//! and the reply still goes out (text only, no cards).

use serde::{Deserialize, Serialize};

use crate::sales::llm::{ChatMessage, LlmClient, LlmError};
use crate::sales::reply::HANDOFF_MARKER;

pub const STRUCTURED_FALLBACK: &str = "igsales_llm_structured_fallback_total";
/// Suggestions the model may make; more are dropped.
pub const MAX_SUGGESTIONS: usize = 3;
/// SKUs the model may choose; more are dropped (a generic template holds ten).
pub const MAX_SKUS: usize = 10;

/// A suggested answer for the customer to tap, maybe about one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suggestion {
    pub title: String,
    /// Empty when it is about no product in particular.
    #[serde(default)]
    pub sku: String,
}

/// What the model answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Answer {
    pub text: String,
    #[serde(default)]
    pub skus: Vec<String>,
    #[serde(default)]
    pub quick_replies: Vec<Suggestion>,
    #[serde(default)]
    pub handoff: bool,
}

impl Answer {
    /// A plain-text answer: no cards, no suggestions; the marker hands off.
    pub fn plain(text: &str) -> Self {
        Answer {
            text: text.to_owned(),
            handoff: text.contains(HANDOFF_MARKER),
            ..Default::default()
        }
    }

    /// The structure, if `content` is it (caps applied; the marker in the text hands off too).
    pub fn parse(content: &str) -> Option<Self> {
        let mut a: Answer = serde_json::from_str(content.trim()).ok()?;
        a.handoff |= a.text.contains(HANDOFF_MARKER);
        a.skus.retain(|s| !s.trim().is_empty());
        a.skus.dedup();
        a.skus.truncate(MAX_SKUS);
        a.quick_replies.retain(|q| !q.title.trim().is_empty());
        a.quick_replies.truncate(MAX_SUGGESTIONS);
        Some(a)
    }
}

/// The `response_format` of the structured call.
pub fn response_format() -> serde_json::Value {
    serde_json::json!({
        "type": "json_schema",
        "json_schema": {
            "name": "shop_reply",
            "strict": true,
            "schema": {
                "type": "object",
                "additionalProperties": false,
                "required": ["text", "skus", "quick_replies", "handoff"],
                "properties": {
                    "text": {
                        "type": "string",
                        "description": "The reply to the customer, in their language, a few sentences at most."
                    },
                    "skus": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "SKUs from the catalog to show as product cards, best first; empty when none fits."
                    },
                    "quick_replies": {
                        "type": "array",
                        "description": "Up to 3 short answers the customer may tap next (at most 20 characters each).",
                        "items": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["title", "sku"],
                            "properties": {
                                "title": {"type": "string"},
                                "sku": {"type": "string", "description": "The SKU it is about, or empty."}
                            }
                        }
                    },
                    "handoff": {
                        "type": "boolean",
                        "description": "True when the customer asks to talk to a person; the text is then empty."
                    }
                }
            }
        }
    })
}

/// Why an answer came in plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    Refused,
    PlainText,
    InvalidJson,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Refused => "refused",
            Fallback::PlainText => "plain_text",
            Fallback::InvalidJson => "invalid_json",
        }
    }
}

/// What the structured call's content means: the structure, or why not.
pub fn read(content: &str) -> Result<Answer, Fallback> {
    if let Some(a) = Answer::parse(content) {
        return Ok(a);
    }
    if content.trim_start().starts_with('{') {
        Err(Fallback::InvalidJson)
    } else {
        Err(Fallback::PlainText)
    }
}

/// Asks for the structure; falls back to plain text as the module comment says.
/// `plain_messages` is the same conversation with plain-text instructions.
pub async fn ask(
    llm: &LlmClient,
    messages: Vec<ChatMessage>,
    plain_messages: impl FnOnce() -> Vec<ChatMessage>,
) -> Result<Answer, LlmError> {
    let why = match llm.complete_with(messages, Some(response_format())).await {
        Ok(content) => match read(&content) {
            Ok(answer) => return Ok(answer),
            Err(Fallback::PlainText) => {
                count(Fallback::PlainText);
                return Ok(Answer::plain(&content));
            }
            Err(why) => why,
        },
        Err(LlmError::StructureRefused) => Fallback::Refused,
        Err(e) => return Err(e),
    };
    count(why);
    let content = llm.complete(plain_messages()).await?;
    Ok(Answer::plain(&content))
}

fn count(why: Fallback) {
    tracing::info!(
        reason = why.as_str(),
        "model answered without the structure; plain text"
    );
    metrics::counter!(STRUCTURED_FALLBACK, "reason" => why.as_str()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_structure_is_read_and_capped_and_anything_else_says_why_not() {
        let a = read(
            r#"{"text":"Temos!","skus":["A","A","B"],"quick_replies":[{"title":"Tem M?","sku":"A"},{"title":" ","sku":""},{"title":"b","sku":""},{"title":"c","sku":""},{"title":"d","sku":""}],"handoff":false}"#,
        )
        .expect("structure");
        assert_eq!(a.text, "Temos!");
        assert_eq!(a.skus, ["A", "B"]);
        assert_eq!(a.quick_replies.len(), MAX_SUGGESTIONS);
        assert_eq!(a.quick_replies[0].sku, "A");
        assert!(!a.handoff);
        let marker = read(&format!(
            r#"{{"text":"{HANDOFF_MARKER}","skus":[],"quick_replies":[],"handoff":false}}"#
        ))
        .expect("structure");
        assert!(marker.handoff);
        assert_eq!(read("Temos sim!"), Err(Fallback::PlainText));
        assert_eq!(
            read(r#"{"text":"Temos","skus":["#),
            Err(Fallback::InvalidJson)
        );
        assert_eq!(read(r#"{"reply":"Temos"}"#), Err(Fallback::InvalidJson));
        assert!(Answer::plain(HANDOFF_MARKER).handoff);
        assert!(!Answer::plain("oi").handoff);
    }

    #[test]
    fn a_kept_answer_reads_back_whole() {
        // What `inbound` keeps in Redis for a run after a failed store.
        let a = Answer {
            text: "Temos a Caneca azul por R$ 35,00!".into(),
            skus: vec!["CAN-1".into()],
            quick_replies: vec![Suggestion {
                title: "Tem branca?".into(),
                sku: "CAN-2".into(),
            }],
            handoff: false,
        };
        let kept = serde_json::to_string(&a).expect("json");
        assert_eq!(Answer::parse(&kept), Some(a));
    }

    #[test]
    fn the_response_format_is_a_strict_schema_requiring_every_field() {
        let f = response_format();
        assert_eq!(f["type"], "json_schema");
        assert_eq!(f["json_schema"]["strict"], true);
        let schema = &f["json_schema"]["schema"];
        let props: Vec<&str> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .map(String::as_str)
            .collect();
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        required.sort_unstable();
        let mut props = props;
        props.sort_unstable();
        // Strict mode wants every property required and no others allowed.
        assert_eq!(props, required);
        assert_eq!(schema["additionalProperties"], false);
    }
}
