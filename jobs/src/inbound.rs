use chrono::{DateTime, Utc};
use igsales_meta::webhook::EventKind;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::delivery::Delivery;
use crate::queue::Job;

/// One webhook event for one merchant, as the ingress received it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboundEventV1 {
    pub merchant_id: Uuid,
    /// `entry.id`: the merchant's Instagram professional account.
    pub instagram_account_id: String,
    /// The dedupe key of SPEC §4.1 (`message:{mid}`, `echo:{mid}`, …, `h:{sha256}`).
    pub event_id: String,
    pub kind: EventKind,
    /// `entry.time` in milliseconds, when Meta sent it.
    #[serde(default)]
    pub entry_time_ms: Option<i64>,
    pub received_at: DateTime<Utc>,
    /// The event exactly as Meta sent it (one `messaging[]` or `changes[]` item).
    pub event: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Delivery::is_fresh")]
    pub delivery: Delivery,
}

impl Job for InboundEventV1 {
    const NAME: &'static str = "inbound_event";
    fn delivery(&self) -> &Delivery {
        &self.delivery
    }
    fn delivery_mut(&mut self) -> &mut Delivery {
        &mut self.delivery
    }
}

/// An inbound event that needs no model (an echo, a read, a reaction, a deletion, …) on a
/// queue of its own: an echo confirms one of our sends (SPEC §5.3), so it must not wait behind
/// a backlog of model calls. The payload is the same as `inbound_event`'s.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InboundSignalV1(pub InboundEventV1);

impl Job for InboundSignalV1 {
    const NAME: &'static str = "inbound_signal";
    fn delivery(&self) -> &Delivery {
        &self.0.delivery
    }
    fn delivery_mut(&mut self) -> &mut Delivery {
        &mut self.0.delivery
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InboundEventV1 {
        InboundEventV1 {
            merchant_id: Uuid::parse_str("6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b").expect("uuid"),
            instagram_account_id: "17841400538867190".into(),
            event_id: "message:aWdfZAG1".into(),
            kind: EventKind::Message,
            entry_time_ms: Some(1_762_022_388_574),
            received_at: DateTime::parse_from_rfc3339("2026-11-26T05:00:00.123Z")
                .expect("time")
                .with_timezone(&Utc),
            event: RawValue::from_string(
                r#"{"sender":{"id":"1129842642640637"},"message":{"mid":"aWdfZAG1","text":"Ol\u00e1"}}"#
                    .into(),
            )
            .expect("raw"),
            delivery: Delivery::default(),
        }
    }

    /// The wire form is a contract between deployments: this snapshot changes only together
    /// with a new job version.
    const SNAPSHOT: &str = r#"{"merchant_id":"6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b","instagram_account_id":"17841400538867190","event_id":"message:aWdfZAG1","kind":"message","entry_time_ms":1762022388574,"received_at":"2026-11-26T05:00:00.123Z","event":{"sender":{"id":"1129842642640637"},"message":{"mid":"aWdfZAG1","text":"Ol\u00e1"}}}"#;

    #[test]
    fn inbound_event_v1_wire_form_is_stable() {
        assert_eq!(
            serde_json::to_string(&sample()).expect("serialize"),
            SNAPSHOT
        );
        let back: InboundEventV1 = serde_json::from_str(SNAPSHOT).expect("deserialize");
        assert_eq!(
            back.event.get(),
            sample().event.get(),
            "raw event bytes survive"
        );
        assert_eq!(InboundEventV1::NAME, "inbound_event");
    }

    #[test]
    fn inbound_signal_v1_has_the_inbound_event_wire_form() {
        let signal = InboundSignalV1(sample());
        assert_eq!(serde_json::to_string(&signal).expect("serialize"), SNAPSHOT);
        assert_eq!(InboundSignalV1::NAME, "inbound_signal");
    }

    #[test]
    fn older_payloads_without_optional_fields_still_decode() {
        let minimal = r#"{"merchant_id":"6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b","instagram_account_id":"1","event_id":"h:ab","kind":"reaction","received_at":"2026-11-26T05:00:00Z","event":{}}"#;
        let job: InboundEventV1 = serde_json::from_str(minimal).expect("decode");
        assert_eq!(job.entry_time_ms, None);
        assert_eq!(job.kind, EventKind::Reaction);
    }
}
