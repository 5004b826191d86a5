use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::delivery::Delivery;
use crate::queue::Job;

/// Send one reply part. The text and its status live in its `outbound_messages` row (keyed
/// by `idempotency_key`), which makes the send at most once across retries and replays — and
/// keeps customer-facing text out of Redis and the dead-letter lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessageV1 {
    pub merchant_id: Uuid,
    pub instagram_account_id: String,
    pub recipient_igsid: String,
    pub idempotency_key: String,
    /// Meta's 24-hour window after the customer's last message closes here: never send later.
    pub window_closes_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Delivery::is_fresh")]
    pub delivery: Delivery,
    /// Where the part goes; jobs from before comments were answered are DMs.
    #[serde(default, skip_serializing_if = "SendChannel::is_dm")]
    pub channel: SendChannel,
}

/// A DM, the private reply to a comment (one per comment, within 7 days), or a public reply
/// under it: each has its own Graph call and limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendChannel {
    #[default]
    Dm,
    PrivateReply,
    PublicReply,
}

impl SendChannel {
    pub fn is_dm(&self) -> bool {
        *self == SendChannel::Dm
    }
}

impl Job for SendMessageV1 {
    const NAME: &'static str = "send_message";
    fn delivery(&self) -> &Delivery {
        &self.delivery
    }
    fn delivery_mut(&mut self) -> &mut Delivery {
        &mut self.delivery
    }
}
